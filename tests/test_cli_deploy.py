"""``edgemvp export / check / devices``: exit codes 0 / 2 / 3 and one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgemvp.masks import random_masks
from edgemvp.shrink import save_pruned
from tests.deploy_helpers import SMALL, profile_data, tiny_model, tiny_onnx, write_profile
from tests.test_cli import assert_usage_error, run


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("onnx") / "m.onnx")


def test_check_exits_0_within_and_3_over_budget(onnx_file: Path) -> None:
    ok = run("check", str(onnx_file), "--device", "host", "--budget-ms", "1000", "--runs", "20")
    assert ok.returncode == 0 and ok.stdout.startswith("within budget: ") and "(measured, CPUExecutionProvider" in ok.stdout
    over = run("check", str(onnx_file), "--device", "local", "--budget-ms", "0.0001", "--runs", "20")
    assert over.returncode == 3, over.stderr
    line = over.stderr.strip()
    assert "\n" not in line and line.startswith("error: over budget: ") and " ms p90 (measured, " in line
    assert line.endswith("> 0.0001 ms")


def test_check_estimates_for_another_device(onnx_file: Path) -> None:
    out = run("check", str(onnx_file), "--device", "rpi", "--budget-ms", "0.001")
    assert out.returncode == 3 and "p90 (estimated at fp32, rpi4 cost model) > 0.001 ms" in out.stderr


def _bad_cases(tmp: Path, onnx_file: Path) -> dict[str, tuple[list[str], list[str]]]:
    (tmp / "text.onnx").write_text("not a model")
    data = onnx_file.read_bytes()
    (tmp / "cut.onnx").write_bytes(data[: len(data) // 3])
    big = write_profile(tmp / "p224", profile_data("host", name="needs-224", aliases=[],
                                                   export={"opset": 18, "input_size": 224}))
    (tmp / "broken.yaml").write_text("name: x\n  budget: [1")
    incomplete = profile_data("host", name="no-budget", aliases=[])
    incomplete.pop("budget")
    write_profile(tmp / "inc", incomplete)
    m = str(onnx_file)
    return {
        "not onnx": (["check", str(tmp / "text.onnx"), "-d", "host"], ["not an ONNX model"]),
        "truncated": (["check", str(tmp / "cut.onnx"), "-d", "host"], ["cut.onnx"]),
        "wrong shape": (["check", m, "-d", "needs-224", "--profiles", str(big)], ["wrong input shape", "224 px"]),
        "unknown device": (["check", m, "-d", "pi9"], ["unknown device 'pi9'", "jetson-nano", "rpi5"]),
        "malformed yaml": (["devices", "list", "--profiles", str(tmp / "broken.yaml")], ["broken.yaml: malformed YAML"]),
        "incomplete yaml": (["devices", "show", "host", "--profiles", str(tmp / "inc")], ["field 'budget' is missing"]),
        "missing file": (["check", str(tmp / "nope.onnx"), "-d", "host"], ["not found"]),
    }


@pytest.mark.parametrize("case", ["not onnx", "truncated", "wrong shape", "unknown device", "malformed yaml",
                                  "incomplete yaml", "missing file"])
def test_bad_input_is_one_line_exit_2(case: str, tmp_path: Path, onnx_file: Path) -> None:
    args, fragments = _bad_cases(tmp_path, onnx_file)[case]
    assert_usage_error(run(*args), *fragments)


def test_devices_list_and_show() -> None:
    out = run("devices", "list")
    assert out.returncode == 0 and "jetson-nano" in out.stdout and "(this machine)" in out.stdout
    show = run("devices", "show", "jetson")
    assert show.returncode == 0 and "name: jetson-nano" in show.stdout and "nvidia-nano-benchmarks" in show.stdout


def test_export_a_run_folder(tmp_path: Path) -> None:
    masks = random_masks("resnet18", 0.9, 0)
    save_pruned(tiny_model("resnet18", 0.9), masks, SMALL, 5, tmp_path / "run")
    out = run("export", str(tmp_path / "run" / "weights.safetensors"), "--device", "jetson", "--out",
              str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "out" / "export.json").read_text())
    assert report["export"]["parity"]["passed"] and report["export"]["exporter"] == "dynamo"
    assert report["export"]["opset"] == 18 and report["latency"]["fp32"]["source"] == "estimated"
    assert (tmp_path / "out" / "model.onnx").is_file() and "parity max abs diff" in out.stdout
