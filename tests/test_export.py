"""ONNX export: checker + parity for tiny models, a tampered export refused, int8 agreement."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import edgemvp.deploy.onnx as export_mod
from edgemvp.errors import UsageError
from edgemvp.deploy.onnx import ExportConfig, ParityError, check_onnx, export_model, run_onnx, seeded_inputs
from edgemvp.deploy.quantize import quantize_model
from tests.deploy_helpers import SMALL, tiny_model
from tests.helpers import ALL_ARCHS, ONE_PER_FAMILY, TYPICAL_ARCHS


@pytest.mark.parametrize("arch, ratio, exporter", [
    pytest.param(arch, 0.9, "dynamo", marks=() if arch in TYPICAL_ARCHS else pytest.mark.slow) for arch in ALL_ARCHS
] + [(arch, 0.0, "torchscript") for arch in ONE_PER_FAMILY])
def test_export_passes_checker_and_parity(arch: str, ratio: float, exporter: str, tmp_path: Path) -> None:
    result = export_model(tiny_model(arch, ratio), arch, SMALL, tmp_path / "m.onnx",
                          ExportConfig(exporter=exporter, parity_samples=256))
    assert result.exporter == exporter and result.opset == 18
    assert result.parity.passed and result.parity.top1_agreement == 1.0 and result.parity.max_abs_diff < 1e-4
    assert result.input_shape[1:] == (1, 32, 32) and isinstance(result.input_shape[0], str)  # dynamic batch only
    model = onnx.load(result.path)
    assert [o.name for o in model.graph.output] == ["logits"] and not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)  # one file
    sess = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    assert run_onnx(sess, seeded_inputs(SMALL, 3, 1).numpy()).shape == (3, 5)  # another batch size runs


_EXPORT_RAW = export_mod.export_raw


def _tampered_export(model, spec, out, cfg):
    exporter = _EXPORT_RAW(model, spec, out, cfg)
    proto = onnx.load(str(out))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest weight
    arr = numpy_helper.to_array(init).copy()
    arr.flat[: arr.size // 2] *= -3.0
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(out))
    return exporter


def test_broken_export_is_refused_with_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_mod, "export_raw", _tampered_export)
    with pytest.raises(ParityError, match=r"export refused: .*max abs diff \S+ \(tolerance 0.001\), top-1 agreement"):
        export_model(tiny_model("resnet18", 0.5), "resnet18", SMALL, tmp_path / "m.onnx",
                     ExportConfig(exporter="torchscript"))
    assert not (tmp_path / "m.onnx").exists() and list(tmp_path.iterdir()) == []


def test_not_onnx_and_truncated_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_text("hello")
    with pytest.raises(UsageError, match="not an ONNX model, or truncated"):
        check_onnx(tmp_path / "a.onnx")
    good = export_model(tiny_model(), "resnet18", SMALL, tmp_path / "g.onnx", ExportConfig(exporter="torchscript"))
    data = Path(good.path).read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="t.onnx: (not an ONNX model, or truncated|fails onnx.checker)"):
        check_onnx(tmp_path / "t.onnx")


def test_int8_static_keeps_top1_on_tiny_resnet(tmp_path: Path) -> None:
    fp32 = export_model(tiny_model("resnet18", 0.5), "resnet18", SMALL, tmp_path / "m.onnx",
                        ExportConfig(exporter="torchscript")).path
    calib = seeded_inputs(SMALL, 128, 7).numpy()
    out = quantize_model(Path(fp32), tmp_path / "m.int8.onnx", "static-qdq", True, calib)
    check_onnx(out)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = seeded_inputs(SMALL, 256, 8).numpy()
    a = run_onnx(ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]), x).argmax(1)
    b = run_onnx(ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]), x).argmax(1)
    assert (a == b).mean() >= 0.9  # random weights and inputs; the real-data check (>= 98%) is bench/int8.py


def test_int8_dynamic_for_vit(tmp_path: Path) -> None:
    fp32 = export_model(tiny_model("vit_tiny", 0.5), "vit_tiny", SMALL, tmp_path / "v.onnx",
                        ExportConfig(exporter="torchscript")).path
    out = quantize_model(Path(fp32), tmp_path / "v.int8.onnx", "dynamic")
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"} and out.stat().st_size < Path(fp32).stat().st_size / 2
    with pytest.raises(UsageError, match="needs calibration images"):
        quantize_model(Path(fp32), tmp_path / "x.onnx", "static-qdq")
