"""Latency: measured percentiles, the cost model's fit, estimates on a user profile, the budget gate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgemvp.deploy.costmodel import CostConstants, OpTable, estimate_ms, fit_constants, op_table
from edgemvp.deploy.devices import ProfileRegistry
from edgemvp.errors import BudgetExceeded
from edgemvp.deploy.budget import enforce_budget
from edgemvp.deploy.latency import estimate, measure
from tests.deploy_helpers import profile_data, tiny_onnx, write_profile

TRUE = CostConstants(120, 60, 100, 5, 40, 400, 12, 25, 15, 2.0, 0.03, 32)


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
    lat = [estimate_ms(t, TRUE, 16) for t in tables]
    prior = CostConstants(*(v * f for v, f in zip(TRUE.to_dict().values(), (2, 0.5, 3, 0.3, 2, 0.5, 3, 0.4, 2, 3, 2, 0.5))))
    fit = fit_constants(tables, lat, prior, 16, prior_weight=1e-4)
    assert fit.within(0.01) == 1.0
    got, want = fit.constants.to_dict(), TRUE.to_dict()
    for key in ("gflops_conv", "gflops_conv_unaligned", "gflops_matmul", "gbs_act", "op_overhead_us"):
        assert got[key] == pytest.approx(want[key], rel=0.05), key
    held = _synthetic_tables(20, seed=1)
    assert all(abs(estimate_ms(t, fit.constants, 16) / estimate_ms(t, TRUE, 16) - 1) < 0.02 for t in held)


def test_misaligned_convolutions_pay_for_im2col() -> None:
    """The column buffer of a channel-misaligned convolution costs memory traffic; aligned ones do not pay it."""
    def conv(cout: float) -> OpTable:  # one 3x3 convolution, 64 -> cout channels, 16x16 output
        flops = 2 * 16 * 16 * 64 * 9 * cout
        return OpTable(("Conv",), ("conv",), np.array([64.0]), np.array([cout]), np.array([flops]),
                       np.array([4 * 16 * 16 * (64 + cout)]), np.array([4 * 64 * 9 * cout]))

    aligned, odd = conv(64.0), conv(63.0)
    assert aligned.im2col_bytes()[0] == pytest.approx(4 * 16 * 16 * 64 * 9)
    slow = CostConstants(**{**TRUE.to_dict(), "gbs_im2col": 0.1})
    assert estimate_ms(aligned, slow, 16) == pytest.approx(estimate_ms(aligned, TRUE, 16))
    assert estimate_ms(odd, slow, 16) > 5 * estimate_ms(odd, TRUE, 16)


def test_weights_beyond_the_fitted_cache_stream_from_dram() -> None:
    """Weights that do not fit in the (fitted) cache cost DRAM time in proportion to the share that spills."""
    def gemm(weight_mb: float) -> OpTable:  # one 64-channel 1x1 convolution over a 1x1 map with this many weights
        return OpTable(("Conv",), ("conv",), np.array([64.0]), np.array([64.0]), np.array([2.0 * 64 * 64]),
                       np.array([512.0]), np.array([weight_mb * 2 ** 20]))

    def ms(table: OpTable, cache_mb: float) -> float:
        return estimate_ms(table, CostConstants(**{**TRUE.to_dict(), "cache_mb": cache_mb}), 16)

    small, big = gemm(4.0), gemm(16.0)
    assert ms(small, 8) == pytest.approx(ms(small, 32))  # fits in both: no spill
    dram_s = 16 * 2 ** 20 / (TRUE.gbs_dram * 1e9)  # all 16 MB from DRAM, in seconds
    assert (ms(big, 8) - ms(big, 32)) / 1e3 == pytest.approx(0.5 * dram_s, rel=1e-6)  # half of it spills
    assert CostConstants.from_vector(TRUE.vector()) == TRUE


def test_op_table_counts_flops_and_alignment(tmp_path: Path) -> None:
    table = op_table(tiny_onnx(tmp_path / "m.onnx", ratio=0.0))
    conv = np.array([b == "conv" for b in table.base])
    assert conv.sum() == 20 and "BatchNormalization" not in table.op  # folded into the convolutions
    assert table.flops[conv].sum() == pytest.approx(2 * 35.4e6, rel=0.02)  # resnet18 at 32 px: 35.4 M MACs
    assert (table.classes(16)[conv] == 0).all()  # widths 64..512 (and the 1-channel stem) suit a 16-lane block
    assert table.weight_bytes.sum() == pytest.approx(4 * 11.17e6, rel=0.01)
    pruned = op_table(tiny_onnx(tmp_path / "p.onnx", ratio=0.9))
    assert (pruned.classes(16)[np.array([b == "conv" for b in pruned.base])] == 1).any()


def _conv_onnx(path: Path, k: int, size: int, channels: int = 64) -> Path:
    """One k x k convolution (padding k // 2) over a size x size map, as an ONNX file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((channels, channels, k, k), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4)
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, channels, size, size]) for n in "xy")
    graph = helper.make_graph([node], "conv", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    return path


def test_padding_taps_cost_nothing(tmp_path: Path) -> None:
    """Kernel taps that only ever see zero padding are skipped: a 3x3 convolution over a 1x1 map costs a 1x1 one."""
    one = op_table(_conv_onnx(tmp_path / "a.onnx", 3, 1))
    assert one.tap_share[0] == pytest.approx(1 / 9) and one.weight_share[0] == pytest.approx(1 / 9)
    assert one.flops[0] == 2 * 64 * 64 * 9  # nominal work is still reported as such
    pointwise = op_table(_conv_onnx(tmp_path / "b.onnx", 1, 1))
    assert estimate_ms(one, TRUE, 16) == pytest.approx(estimate_ms(pointwise, TRUE, 16), rel=1e-6)
    two = op_table(_conv_onnx(tmp_path / "c.onnx", 3, 2))  # each output sees 2x2 of the 3x3 taps; all taps used
    assert two.tap_share[0] == pytest.approx(4 / 9) and two.weight_share[0] == 1.0
    eight = op_table(_conv_onnx(tmp_path / "d.onnx", 3, 8))  # per axis 22 of 24 (output, tap) pairs are inside
    assert eight.tap_share[0] == pytest.approx((22 / 24) ** 2) and eight.weight_share[0] == 1.0
    resnet = op_table(tiny_onnx(tmp_path / "r.onnx", ratio=0.0))  # resnet18 at 32 px: stage 4 sees 1x1 maps
    flops, weight = resnet.effective()
    assert weight.sum() < 0.4 * resnet.weight_bytes.sum() and flops.sum() < 0.7 * resnet.flops.sum()
    restored = OpTable.from_json(resnet.to_json())
    assert np.array_equal(restored.tap_share, resnet.tap_share) and np.array_equal(restored.weight_share, resnet.weight_share)


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
    # the references are medians, the budget p90: the estimate is converted with the profile's stated spread
    spread = profile.calibration.spread["p90"]
    assert report.source == "estimated" and report.statistic == "p90" and spread > 1
    assert report.stats["p90"] == pytest.approx(report.stats["p50"] * spread) and "spread" in report.note
    assert report.value_ms == pytest.approx(20.0 * spread, rel=0.2)  # the dense reference (10 vs 5 classes)
    assert estimate(tiny_onnx(tmp_path / "p.onnx", ratio=0.9), profile).value_ms < 6.0 * spread
    assert enforce_budget(report, profile, budget_ms=100) == 100
    # constants written by an older cost model are refitted from the references: one field short (version 1), or
    # all fields but fitted for another formula (unversioned: version 2); constants of this version are used as given
    # all fields of version 3 (which had no fitted cache) with their version stamp
    v3 = {**{k: v for k, v in TRUE.to_dict().items() if k != "cache_mb"}, "cost_model_version": 3}
    for i, constants in enumerate(({k: v for k, v in TRUE.to_dict().items() if k != "gbs_im2col"}, TRUE.to_dict(),
                                   {**TRUE.to_dict(), "cost_model_version": 2}, v3)):
        stale = dict(data, name=f"old-board-{i}")
        stale["calibration"] = dict(data["calibration"], constants=constants)
        old = ProfileRegistry((write_profile(tmp_path / f"o{i}", stale),)).get(f"old-board-{i}")
        assert estimate(model, old).value_ms == pytest.approx(report.value_ms)
    current = dict(data, name="new-board")
    current["calibration"] = dict(data["calibration"], constants=TRUE.to_record())
    new = ProfileRegistry((write_profile(tmp_path / "n", current),)).get("new-board")
    hw = new.hardware
    assert estimate(model, new).value_ms == pytest.approx(estimate_ms(op_table(model), TRUE, hw.channel_block) * spread,
                                                          rel=1e-4)
    with pytest.raises(BudgetExceeded,
                       match=r"over budget: \d+\.\d+ ms p90 \(estimated at fp32, tiny-board cost model\) > 1 ms"):
        enforce_budget(report, profile, budget_ms=1)
