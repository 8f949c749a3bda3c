"""Latency: measured percentiles, the cost model's fit, estimates on a user profile, the budget gate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgemvp.costmodel import CostConstants, OpTable, estimate_ms, fit_constants, op_table
from edgemvp.devices import ProfileRegistry
from edgemvp.errors import BudgetExceeded
from edgemvp.latency import enforce_budget, estimate, measure
from tests.deploy_helpers import profile_data, tiny_onnx, write_profile

TRUE = CostConstants(120, 60, 100, 5, 40, 400, 12, 25, 15, 2.0, 0.03)


def _synthetic_tables(n: int, seed: int = 0) -> list[OpTable]:
    rng = np.random.default_rng(seed)
    tables = []
    for _ in range(n):
        k = int(rng.integers(20, 200))
        base = tuple(rng.choice(["conv", "matmul", "other"], k, p=[0.4, 0.2, 0.4]))
        conv = np.array([b == "conv" for b in base])
        cout = np.where(conv, rng.choice([6, 16, 32, 45, 64], k), 0).astype(float)
        scale = 10 ** rng.uniform(4, 8, k)
        tables.append(OpTable(("X",) * k, base, cout.copy(), cout, scale * np.where(conv | (np.array(base) == "matmul"),
                                                                                      50, 1),
                              scale * rng.uniform(0.2, 2, k), np.where(conv, scale * rng.uniform(0, 3, k), 0)))
    return tables


def test_fit_recovers_constants_on_synthetic_graphs() -> None:
    tables = _synthetic_tables(80)
    lat = [estimate_ms(t, TRUE, 16, 32) for t in tables]
    prior = CostConstants(*(v * f for v, f in zip(TRUE.to_dict().values(), (2, 0.5, 3, 0.3, 2, 0.5, 3, 0.4, 2, 3, 2))))
    fit = fit_constants(tables, lat, prior, 16, 32, prior_weight=1e-4)
    assert fit.within(0.01) == 1.0
    got, want = fit.constants.to_dict(), TRUE.to_dict()
    for key in ("gflops_conv", "gflops_conv_unaligned", "gflops_matmul", "gbs_act", "op_overhead_us"):
        assert got[key] == pytest.approx(want[key], rel=0.05), key
    held = _synthetic_tables(20, seed=1)
    assert all(abs(estimate_ms(t, fit.constants, 16, 32) / estimate_ms(t, TRUE, 16, 32) - 1) < 0.02 for t in held)


def test_misaligned_convolutions_pay_for_im2col() -> None:
    """The column buffer of a channel-misaligned convolution costs memory traffic; aligned ones do not pay it."""
    def conv(cout: float) -> OpTable:  # one 3x3 convolution, 64 -> cout channels, 16x16 output
        flops = 2 * 16 * 16 * 64 * 9 * cout
        return OpTable(("Conv",), ("conv",), np.array([64.0]), np.array([cout]), np.array([flops]),
                       np.array([4 * 16 * 16 * (64 + cout)]), np.array([4 * 64 * 9 * cout]))

    aligned, odd = conv(64.0), conv(63.0)
    assert aligned.im2col_bytes()[0] == pytest.approx(4 * 16 * 16 * 64 * 9)
    slow = CostConstants(**{**TRUE.to_dict(), "gbs_im2col": 0.1})
    assert estimate_ms(aligned, slow, 16, 32) == pytest.approx(estimate_ms(aligned, TRUE, 16, 32))
    assert estimate_ms(odd, slow, 16, 32) > 5 * estimate_ms(odd, TRUE, 16, 32)


def test_op_table_counts_flops_and_alignment(tmp_path: Path) -> None:
    table = op_table(tiny_onnx(tmp_path / "m.onnx", ratio=0.0))
    conv = np.array([b == "conv" for b in table.base])
    assert conv.sum() == 20 and "BatchNormalization" not in table.op  # folded into the convolutions
    assert table.flops[conv].sum() == pytest.approx(2 * 35.4e6, rel=0.02)  # resnet18 at 32 px: 35.4 M MACs
    assert (table.classes(16)[conv] == 0).all()  # widths 64..512 (and the 1-channel stem) suit a 16-lane block
    assert table.weight_bytes.sum() == pytest.approx(4 * 11.17e6, rel=0.01)
    pruned = op_table(tiny_onnx(tmp_path / "p.onnx", ratio=0.9))
    assert (pruned.classes(16)[np.array([b == "conv" for b in pruned.base])] == 1).any()


def test_measure_reports_percentiles(tmp_path: Path) -> None:
    report = measure(tiny_onnx(tmp_path / "m.onnx"), ProfileRegistry().get("host"), runs=30, warmup=3)
    s = report.stats
    assert report.source == "measured" and report.statistic == "p90" and report.value_ms == s["p90"]
    assert 0 < s["p50"] <= s["p90"] <= s["p99"] and report.provider == "CPUExecutionProvider"
    assert report.label().endswith("(measured, CPUExecutionProvider, 1 thread)")


def test_estimate_on_a_user_profile_and_budget_line(tmp_path: Path) -> None:
    data = profile_data("rpi4", name="tiny-board", aliases=[])
    data["calibration"]["references"] = [
        {"model": {"arch": "resnet18", "size": 32, "channels": 1, "classes": 10, "ratio": r}, "latency_ms": ms,
         "statistic": "p50", "source": "spec-derived"} for r, ms in ((0.0, 20.0), (0.5, 6.0))]
    profile = ProfileRegistry((write_profile(tmp_path / "p", data),)).get("tiny-board")
    model = tiny_onnx(tmp_path / "m.onnx", ratio=0.0)
    report = estimate(model, profile)
    assert report.source == "estimated" and report.statistic == "p50"
    assert report.value_ms == pytest.approx(20.0, rel=0.2)  # the dense reference itself (10 vs 5 classes)
    assert estimate(tiny_onnx(tmp_path / "p.onnx", ratio=0.9), profile).value_ms < 6.0
    assert enforce_budget(report, profile, budget_ms=100) == 100
    stale = dict(data, name="old-board")  # constants written by an older cost model (one field short): refitted
    stale["calibration"] = dict(data["calibration"], constants={k: v for k, v in TRUE.to_dict().items()
                                                                if k != "gbs_im2col"})
    old = ProfileRegistry((write_profile(tmp_path / "o", stale),)).get("old-board")
    assert estimate(model, old).value_ms == pytest.approx(report.value_ms)
    with pytest.raises(BudgetExceeded, match=r"over budget: \d+\.\d+ ms p50 \(estimated, tiny-board cost model\) > 1 ms"):
        enforce_budget(report, profile, budget_ms=1)
