"""The torchvision compatibility step is active exactly when torchvision's compiled ops are missing."""
from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_timm_imports_through_edgemvp_and_compat_matches_missing_ops() -> None:
    plain = _run("import torchvision")
    ops_missing = plain.returncode != 0
    if ops_missing:
        assert "torchvision::nms does not exist" in plain.stderr
    via = _run("import edgemvp.models, torchvision, timm, edgemvp._compat as c; print(c.compat_active())")
    assert via.returncode == 0, via.stderr
    assert via.stdout.strip() == str(ops_missing)


def test_compat_stays_off_when_ops_already_exist() -> None:
    code = (
        "import torch\n"
        "lib = torch.library.Library('torchvision', 'DEF')\n"
        "lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')\n"
        "import edgemvp._compat as c\n"
        "print(c.ensure_torchvision_importable(), c.compat_active())\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"


def test_compat_is_idempotent_and_ops_have_no_kernel() -> None:
    code = (
        "import edgemvp._compat as c\n"
        "first = c.ensure_torchvision_importable(); second = c.ensure_torchvision_importable()\n"
        "import torch, torchvision\n"
        "kernel = 'not-defined-here'\n"
        "if first:\n"
        "    try:\n"
        "        torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)\n"
        "        kernel = 'kernel'\n"
        "    except (RuntimeError, NotImplementedError):\n"
        "        kernel = 'no-kernel'\n"
        "print(first, first == second, kernel)\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    first, idempotent, kernel = out.stdout.split()
    assert idempotent == "True"
    # the schemas it defines have no kernel: calling one fails instead of computing anything
    assert kernel == ("no-kernel" if first == "True" else "not-defined-here")
