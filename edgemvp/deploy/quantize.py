"""int8 copies of checked fp32 ONNX files with onnxruntime quantization.

:func:`quantize_model` makes an int8 copy: static QDQ with a calibration reader over task images (CNNs by
default), or dynamic, weights only (ViTs by default); the default per family is
:attr:`edgemvp.models.factory.FamilySpec.int8_mode`, and a device profile's ``quantization`` block may set another.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from edgemvp.deploy.onnx import INPUT_NAME
from edgemvp.errors import UsageError


class _Reader:
    """onnxruntime's calibration data reader over an array of inputs, in batches."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 32) -> None:
        self._batches: Iterator[np.ndarray] = iter([x[i:i + batch] for i in range(0, len(x), batch)])
        self.name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.name: batch}

    def rewind(self) -> None:  # the calibrator reads once
        return None


def quantize_model(fp32: Path, out: Path, mode: str, per_channel: bool = True,
                   calibration: np.ndarray | None = None) -> Path:
    """Write an int8 copy of an fp32 ONNX file with onnxruntime quantization.

    Args:
        fp32: The checked fp32 file.
        out: Destination of the int8 file.
        mode: ``static-qdq`` (QDQ format, activations calibrated with min-max on ``calibration``) or ``dynamic``
            (weights int8, activations quantized at run time).
        per_channel: Per-output-channel weight scales.
        calibration: Model inputs ``(N, C, S, S)`` float32 for static quantization.

    Raises:
        UsageError: Unknown mode, or static quantization without calibration data.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_dynamic, quantize_static)

    if mode not in ("static-qdq", "dynamic"):
        raise UsageError(f"unknown quantization mode '{mode}'; valid modes: dynamic, static-qdq")
    if mode == "static-qdq" and (calibration is None or not len(calibration)):
        raise UsageError("static int8 quantization needs calibration images: give --task (or --dataset and --classes)")
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # fold BatchNorm, infer shapes
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
        else:
            reader = _Reader(INPUT_NAME, calibration.astype(np.float32))
            quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    return out
