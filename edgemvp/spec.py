"""Small typed objects shared by the data and model stages."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input: channels, square size and per-channel normalisation.

    Attributes:
        channels: 1 (grey) or 3 (RGB).
        size: Height and width in pixels.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by after subtracting the mean.
        crop_pct: A photo is resized to ``size / crop_pct`` on its shorter side, then centre-cropped (timm's
            eval transform; 1 crops nothing more than the square).
        interpolation: ``bilinear`` or ``bicubic`` (antialiased) for resizing.
    """

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.size < 8:
            raise ValueError(f"input size must be at least 8 px, got {self.size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if min(self.std) <= 0:
            raise ValueError("std must be positive")
        if not 0.1 <= self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be within [0.1, 1], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (crop and interpolation only when not the defaults, so older ids stay the same)."""
        data = asdict(self)
        if self.crop_pct == 1.0:
            del data["crop_pct"]
        if self.interpolation == "bilinear":
            del data["interpolation"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["channels"]), int(data["size"]), tuple(data["mean"]), tuple(data["std"]),
                   float(data.get("crop_pct", 1.0)), str(data.get("interpolation", "bilinear")))

    def shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The input tensor shape ``(B, C, H, W)`` for a batch size."""
        return (batch, self.channels, self.size, self.size)
