"""ONNX export with a proof of equivalence.

:func:`export_model` exports a PyTorch model with an explicitly chosen exporter (``dynamo``: torch.export +
onnxscript, the default; ``torchscript``: the legacy tracer, used as a documented fallback when the dynamo
exporter fails), at opset 18 unless asked otherwise, with a dynamic batch axis only, as a single file. The file
must pass ``onnx.checker`` (full check) and a parity check against PyTorch on seeded inputs: max abs difference
of the logits and top-1 agreement within the arch's tolerance (:attr:`edgemvp.models.factory.ArchSpec.tolerance`).
An export that fails parity is refused with the numbers and never lands at its destination.

int8 copies are made by :mod:`edgemvp.deploy.quantize`.
"""
from __future__ import annotations

import logging
import os
import stat
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from edgemvp.errors import EdgeMVPError, UsageError
from edgemvp.models.factory import get_arch
from edgemvp.models.weights import sha256_file
from edgemvp.spec import InputSpec

MAX_ONNX_BYTES = 2**31 - 1  # protobuf's limit on one message
MAX_INPUT_SIDE = 4096
# operator domains a model's nodes may use: ONNX's own (and its training domains, which onnxruntime's quantiser
# imports), ONNX-ML, and onnxruntime's contrib ops (quantised graphs)
ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training", "com.microsoft")

logger = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input", "logits"
Exporter = Literal["dynamo", "torchscript"]


@dataclass(frozen=True)
class Tolerance:
    """Parity tolerances: max abs difference of the logits and the minimum top-1 agreement (0..1)."""

    atol: float
    min_top1: float = 1.0


@dataclass(frozen=True)
class ExportConfig:
    """How to export.

    Attributes:
        opset: ONNX opset requested (the one produced is recorded).
        exporter: ``dynamo`` (default) or ``torchscript`` (legacy).
        fallback: Retry with the legacy exporter when the dynamo exporter fails (recorded and logged).
        parity_samples: Seeded inputs compared with PyTorch.
        seed: Seed of those inputs.
    """

    opset: int = 18
    exporter: Exporter = "dynamo"
    fallback: bool = True
    parity_samples: int = 256
    seed: int = 0


class ParityError(EdgeMVPError):
    """An export whose outputs do not match PyTorch's (exit code 1: the exporter, not the user, is at fault)."""


@dataclass(frozen=True)
class ParityResult:
    """Outputs of the ONNX file against PyTorch on seeded inputs."""

    samples: int
    max_abs_diff: float
    top1_agreement: float
    atol: float
    min_top1: float

    @property
    def passed(self) -> bool:
        """Within both tolerances."""
        return self.max_abs_diff <= self.atol and self.top1_agreement >= self.min_top1

    def summary(self) -> str:
        """One line with the numbers."""
        return (f"max abs diff {self.max_abs_diff:.3g} (tolerance {self.atol:g}), top-1 agreement "
                f"{100 * self.top1_agreement:.2f}% (required {100 * self.min_top1:.2f}%) on {self.samples} seeded inputs")


@dataclass(frozen=True)
class ExportResult:
    """What an export produced."""

    path: str
    arch: str
    exporter: str
    opset: int
    input_shape: tuple[int | str, ...]
    parity: ParityResult
    file_bytes: int
    sha256: str

    def to_dict(self) -> dict:
        """JSON-ready form."""
        data = asdict(self)
        data["parity"]["passed"] = self.parity.passed
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ExportResult:
        """Inverse of :meth:`to_dict` (``parity.passed`` is recomputed from the numbers)."""
        parity = ParityResult(**{k: v for k, v in data["parity"].items() if k != "passed"})
        return cls(**{**data, "input_shape": tuple(data["input_shape"]), "parity": parity})


def export_raw(model: nn.Module, spec: InputSpec, out: Path, cfg: ExportConfig = ExportConfig()) -> str:
    """Export to one ONNX file (dynamic batch axis only), without checks.

    Returns:
        The exporter that produced the file (``dynamo`` or ``torchscript``).

    Raises:
        EdgeMVPError: Both exporters failed.
    """
    model = model.eval()
    example = (torch.randn(2, *spec.shape()[1:]),)  # batch 2: torch.export would specialise a batch of 1
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=cfg.opset)
    out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.exporter == "dynamo":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.onnx.export(model, example, str(out), dynamo=True, external_data=False, optimize=True,
                                  verbose=False, dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), **kwargs)
            return "dynamo"
        except Exception as exc:  # the dynamo exporter raises many types; the fallback is documented
            if not cfg.fallback:
                raise EdgeMVPError(f"dynamo ONNX export failed: {exc.__class__.__name__}: {str(exc)[:200]}") from exc
            logger.warning("dynamo export failed (%s); falling back to the legacy torchscript exporter",
                           exc.__class__.__name__)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is the documented fallback
            torch.onnx.export(model, example, str(out), dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **kwargs)
    except Exception as exc:
        raise EdgeMVPError(f"ONNX export failed: {exc.__class__.__name__}: {str(exc)[:200]}") from exc
    return "torchscript"


def check_onnx(path: str | os.PathLike[str]):
    """Load an ONNX file and run ``onnx.checker`` (full check, with shape inference).

    Returns:
        The loaded ``onnx.ModelProto``.

    Raises:
        UsageError: Missing file, not ONNX, truncated, or failing the checker (one line).
    """
    import onnx

    path = Path(path)
    try:
        st = path.stat()
    except (OSError, ValueError):
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise UsageError(f"ONNX file not found: {path}" if st is None else f"{path}: not a regular file")
    if st.st_size > MAX_ONNX_BYTES:  # protobuf's own limit: a bigger file is not one ONNX message
        raise UsageError(f"{path}: {st.st_size / 2**30:.1f} GiB is over the 2 GiB an ONNX file can hold")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise UsageError(f"{path}: not an ONNX model, or truncated ({exc.__class__.__name__})") from exc
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise UsageError(f"{path}: not an ONNX model, or truncated (empty graph)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        # external data names other files: a model for a device is one file, and a path in it is never followed
        raise UsageError(f"{path}: keeps weights in external files; save it as one file (onnx.save without "
                         "save_as_external_data)")
    newest = onnx.defs.onnx_opset_version()
    foreign = sorted({n.domain for n in model.graph.node} - set(ONNX_DOMAINS))
    if foreign:  # custom operators: no runtime edgemvp deploys to has them
        raise UsageError(f"{path}: uses operators of the domain {foreign[0][:60]!r}; edgemvp runs models of the "
                         f"domains {', '.join(repr(d) for d in ONNX_DOMAINS if d)} and the default one")
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and not 7 <= o.version <= newest:
            raise UsageError(f"{path}: declares opset {o.version}; this onnx {onnx.__version__} knows 7 to {newest}")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise UsageError(f"{path}: fails onnx.checker ({first})") from exc
    return model


def opset_of(model) -> int:
    """The default-domain opset a model declares."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def image_input_shape(model, source: str) -> tuple[int | str, ...]:
    """The single image input's shape ``(batch, C, H, W)`` with a symbolic or fixed batch.

    Raises:
        UsageError: Not one 4-D float image input with fixed channels and a square size.
    """
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise UsageError(f"{source}: wrong input shape: expected one image input, found {len(inputs)} inputs")
    dims = [d.dim_param or d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    ok = len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[1:]) and dims[2] == dims[3]
    if not ok:
        raise UsageError(f"{source}: wrong input shape {tuple(dims)[:8]}: expected (batch, channels, size, size)")
    if dims[1] > 64 or dims[2] > MAX_INPUT_SIDE:  # the sizes edgemvp's input pipeline and the device profiles allow
        raise UsageError(f"{source}: input shape {tuple(dims)}: edgemvp runs images of at most 64 channels and "
                         f"{MAX_INPUT_SIDE} px a side")
    return tuple(dims)


def seeded_inputs(spec: InputSpec, samples: int, seed: int) -> torch.Tensor:
    """``samples`` standard-normal inputs (the model's normalised space), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(samples, *spec.shape()[1:], generator=gen)


def run_onnx(session, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits of an onnxruntime session for a float array, in batches."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def check_parity(model: nn.Module, path: Path, spec: InputSpec, tol: Tolerance, samples: int = 256,
                 seed: int = 0) -> ParityResult:
    """Compare the ONNX file's logits with PyTorch's on seeded inputs."""
    import onnxruntime as ort

    x = seeded_inputs(spec, samples, seed)
    with torch.no_grad():
        ref = torch.cat([model.eval()(chunk) for chunk in x.split(64)]).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = run_onnx(session, x.numpy())
    diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
    agree = float((got.argmax(1) == ref.argmax(1)).mean()) if got.shape == ref.shape else 0.0
    return ParityResult(samples, diff, agree, tol.atol, tol.min_top1)


def export_model(model: nn.Module, arch: str, spec: InputSpec, out: Path, cfg: ExportConfig = ExportConfig()
                 ) -> ExportResult:
    """Export, check and prove parity; the file appears at ``out`` only when everything passes.

    Raises:
        ParityError: Outputs differ beyond the arch's tolerances (the message has the numbers).
        UsageError: The produced file fails ``onnx.checker``.
    """
    tol = Tolerance(get_arch(arch).tolerance)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        exporter = export_raw(model, spec, staged, cfg)
        onnx_model = check_onnx(staged)
        parity = check_parity(model, staged, spec, tol, cfg.parity_samples, cfg.seed)
        if not parity.passed:
            raise ParityError(f"export refused: ONNX outputs differ from PyTorch: {parity.summary()}")
        result = ExportResult(str(out), arch, exporter, opset_of(onnx_model), image_input_shape(onnx_model, str(out)),
                              parity, staged.stat().st_size, sha256_file(staged))
        os.replace(staged, out)
    logger.info("exported %s with %s at opset %d: %s", out, exporter, result.opset, parity.summary())
    return result
