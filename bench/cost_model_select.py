"""Benchmark: choose between cost-model formulas by leave-one-out cross-validation on the calibration suite only.

Usage: python bench/cost_model_select.py MEASUREMENTS.json[.gz]
``MEASUREMENTS.json`` is written by ``bench/cost_model.py --json`` (every suite and held-out measurement with its
op table; two sessions' files are in docs/bench/cost_model_v*_session.json.gz). Each candidate formula is fitted 25 times, each time leaving one suite model out and estimating it;
the formula with the most suite models within +-20% out of sample (ties: lower median |error|) is the one to
ship. The held-out set is scored for every candidate *after* the choice, and is never used to make it.

Candidates, each a change to version 3 of ``edgemvp.deploy.costmodel`` (the line "shipped formula" refits the library's
own formula on the same measurements, as a check that it is the chosen candidate):
- ``v3``: version 3 (per node sqrt(compute^2 + memory^2), weight streaming inside memory, cache = the hardware's).
- ``narrow``: convolutions over small outputs run slower (rate x p / (p + P0), p output pixels, P0 fitted).
- ``taps``: the pack and im2col terms too count only kernel taps inside the input (bench/conv_taps.py: the im2col
  path skips padding taps as well).
- ``additive`` / ``fitted p``: compute and memory add (p = 1), or the exponent p is fitted.
- ``weights apart``: weight streaming is added to the node's roofline, not overlapped with its compute.
- ``fitted cache``: the cache the weights can stay in is fitted (prior: the hardware's last-level cache).
"""
from __future__ import annotations

import gzip
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from edgemvp.deploy.costmodel import SMOOTH_P, OpTable, estimate_ms, fit_constants, prior_constants
from edgemvp.deploy.devices import ProfileRegistry

P0_PRIOR = 16.0  # output pixels at which a blocked convolution runs at half its rate (prior of the narrow term)


@dataclass(frozen=True)
class Variant:
    name: str
    taps: bool = False  # pack and im2col terms on used taps
    narrow: bool = False  # small-output efficiency term
    p: str = "2"  # exponent of the smooth maximum of compute and memory: "2", "1" (additive) or "fit"
    weights_apart: bool = False  # weight streaming added to, not overlapped with, the node's compute
    cache: bool = False  # the cache the weights can stay in is fitted (prior: the hardware's last-level cache)

    def extras(self, cache: float) -> list[float]:
        """Priors of the variant's constants beyond the eleven (P0 px, p - 1, cache bytes)."""
        return [P0_PRIOR] * self.narrow + [1.0] * (self.p == "fit") + [cache] * self.cache  # p - 1: kept positive


VARIANTS = (Variant("v3"), Variant("v3+narrow", narrow=True), Variant("taps", taps=True),
            Variant("taps+narrow", taps=True, narrow=True), Variant("additive", p="1"),
            Variant("fitted p", p="fit"), Variant("weights apart", weights_apart=True),
            Variant("taps+weights apart", taps=True, weights_apart=True), Variant("fitted cache", cache=True),
            Variant("additive+fitted cache", p="1", cache=True), Variant("fitted p+fitted cache", p="fit", cache=True),
            Variant("weights apart+fitted cache", weights_apart=True, cache=True),
            Variant("taps+additive+fitted cache", taps=True, p="1", cache=True))


def out_pixels(t: OpTable) -> np.ndarray:
    """Output pixels of each convolution, from its FLOPs and (bias-carrying, BatchNorm-fused) weight bytes."""
    macs_per_pixel = np.maximum(t.weight_bytes / 4.0 - t.cout, 1.0)  # Cout * Cin/groups * kh * kw
    return np.where(t.cout > 0, t.flops / (2.0 * macs_per_pixel), 1.0)


def predict(variant: Variant, v: np.ndarray, t: OpTable, block: int, cache: float) -> float:
    rates, b_act, b_cache, b_dram, b_pack, b_col, overhead, run = v[:4], *v[4:11]
    cls = t.classes(block)
    flops, weight = t.effective()
    rate = rates[cls]
    extra = list(v[11:])
    if variant.narrow:
        pix, p0 = out_pixels(t), extra.pop(0)
        rate = np.where(cls <= 1, rate * pix / (pix + p0), rate)
    power = {"2": SMOOTH_P, "1": 1.0}.get(variant.p) or 1.0 + extra.pop(0)
    cache = extra.pop(0) if variant.cache else cache
    spill = max(0.0, 1.0 - cache / max(float(weight.sum()), 1.0))
    compute = flops / rate
    stream = weight * (1.0 / b_cache + spill / b_dram)
    col = t.im2col_bytes() * (t.tap_share if variant.taps and t.tap_share is not None else 1.0)
    memory = t.act_bytes / b_act + (cls == 1) * col / b_col + (0.0 if variant.weights_apart else stream)
    node = (compute ** power + memory ** power) ** (1.0 / power) + overhead
    node = node + (stream if variant.weights_apart else 0.0)
    node = node + (cls == 1) * (weight if variant.taps else t.weight_bytes) / b_pack
    return float(node.sum() + run)


def fit(variant: Variant, tables: list[OpTable], ms: list[float], prior: np.ndarray, block: int, cache: float,
        prior_weight: float = 0.05) -> np.ndarray:
    """Same objective as ``edgemvp.costmodel.fit_constants``: log-latency residuals plus a pull to the prior."""
    theta0 = np.log(np.concatenate([prior, variant.extras(cache)]))
    target = np.log(np.asarray(ms) / 1e3)

    def residuals(theta: np.ndarray) -> np.ndarray:
        v = np.exp(theta)
        pred = np.log([predict(variant, v, t, block, cache) for t in tables])
        return np.concatenate([pred - target, prior_weight * (theta - theta0)])

    return np.exp(least_squares(residuals, theta0, method="trf", max_nfev=2000).x)


def score(errors: list[float]) -> tuple[int, float]:
    e = np.abs(errors)
    return int((e <= 0.2).sum()), float(np.median(e))


def main() -> None:
    path = Path(sys.argv[1])
    data = json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())
    block, cache = data["channel_block"], data["cache_mb"] * 2 ** 20
    suite = [(r["model"], OpTable.from_json(json.dumps(r["table"])), r["latency_ms"]) for r in data["suite"]]
    held = [(r["model"], OpTable.from_json(json.dumps(r["table"])), r["latency_ms"]) for r in data["held_out"]]
    hw = ProfileRegistry().get("host").hardware
    prior = prior_constants(hw).vector()[:11]  # the variants' extras (a fitted cache among them) come after these
    lib = fit_constants([t for _, t, _ in suite], [m for *_, m in suite], prior_constants(hw), block)
    print(f"channel block {block}, cache {data['cache_mb']} MB; {len(suite)} suite, {len(held)} held-out models; "
          f"recorded with cost model v{data['cost_model_version']}, {data['runs']} runs each\n")
    print("| formula | suite fit within 20% | leave-one-out within 20% | LOO median abs error | held-out within 20% "
          "| held-out median abs error |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for variant in VARIANTS:
        tables, ms = [t for _, t, _ in suite], [m for *_, m in suite]
        v = fit(variant, tables, ms, prior, block, cache)
        fit_err = [predict(variant, v, t, block, cache) * 1e3 / m - 1 for t, m in zip(tables, ms)]
        loo = []
        for i in range(len(suite)):
            rest = [j for j in range(len(suite)) if j != i]
            vi = fit(variant, [tables[j] for j in rest], [ms[j] for j in rest], prior, block, cache)
            loo.append(predict(variant, vi, tables[i], block, cache) * 1e3 / ms[i] - 1)
        held_err = [predict(variant, v, t, block, cache) * 1e3 / m - 1 for _, t, m in held]
        rows[variant.name] = (score(loo), v, loo, held_err)
        (fw, _), (lw, lmed), (hw_, hmed) = score(fit_err), score(loo), score(held_err)
        print(f"| {variant.name} | {fw}/{len(suite)} | {lw}/{len(suite)} | {100 * lmed:.1f}% | {hw_}/{len(held)} | "
              f"{100 * hmed:.1f}% |", flush=True)
    best = max(rows, key=lambda k: (rows[k][0][0], -rows[k][0][1]))
    print(f"\nchosen by leave-one-out on the suite: {best}")
    lib_held = [estimate_ms(t, lib.constants, block) / m - 1 for _, t, m in held]
    print(f"shipped formula (edgemvp.deploy.costmodel, refitted here): held-out {score(lib_held)[0]}/{len(held)}, "
          f"median {100 * score(lib_held)[1]:.1f}%; constants {lib.constants.to_dict()}")
    print("\nper model (leave-one-out error on the suite; held-out error with the full-suite fit):")
    names = list(rows)
    print("| model | measured ms | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for i, (key, _, m) in enumerate(suite):
        print(f"| suite {key} | {m:.3f} | " + " | ".join(f"{100 * rows[n][2][i]:+.1f}%" for n in names) + " |")
    for i, (key, _, m) in enumerate(held):
        print(f"| held-out {key} | {m:.3f} | " + " | ".join(f"{100 * rows[n][3][i]:+.1f}%" for n in names) + " |")
    print(f"\n{best}: extra constants (suite fit) {[float(f'{x:.4g}') for x in rows[best][1][11:]]}")


if __name__ == "__main__":
    main()
