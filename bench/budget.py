"""Benchmark: latency budgets that choose the model (issue 25), on the host with latency measured.

Usage: EDGEMVP_CACHE=... python bench/budget.py [--json docs/budget.json] [--png docs/budget.png]

32 px (the offline default: the Fashion-MNIST resnet18 base and its default zoo, from the cache): for fashion5 and
three other five-class Fashion-MNIST targets, ``edgemvp prune`` (MVP, J = 100, ``host``) at the uniform ratios 0.5,
0.7, 0.8, 0.9 and 0.95, with channels aligned to the host's block (``--round-to auto``) and not (``--round-to 1``);
then ``--ratio auto`` at three budgets, uniform and ``--allocate greedy``. Every run's p90 is onnxruntime's,
measured by the run itself (100 runs) and re-measured here afterwards on its shipped ``model.onnx``: the 16 models
of a target side by side, in 5 interleaved rounds (each model 100 runs and at least 0.3 s a round, the order rotated
every round), the median of a model's round p90s kept; so the budget runs and the uniform ratios they are compared
with are timed in the same moments of a machine whose speed drifts. The budgets are fixed shares (8%, 15%, 30%) of
the dense skeleton's p90 measured at the start, not chosen from any result.

224 px (3-channel resnet18, the input the pre-trained bases deploy at): latency only (no 224-px base is trained
here): the skeleton at the same uniform ratios, aligned and not, exported with the default exporter and
measured; then the search at three budgets (8%, 15%, 30% of dense), its chosen model exported and measured.

Prints Markdown tables for docs/results.md and writes the figures (JSON) and a plot (PNG).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgemvp.models  # noqa: F401  (registers the archs with timm)
from edgemvp.data.tasks import resolve_task
from edgemvp.deploy.devices import ProfileRegistry
from edgemvp.deploy.latency import measure
from edgemvp.deploy.onnx import ExportConfig, export_model
from edgemvp.deploy.search import SkeletonTimer, counts, like_trained, search_ratio
from edgemvp.errors import BudgetExceeded
from edgemvp.masks import masks_from_scores
from edgemvp.models.factory import create_model
from edgemvp.pipeline import PruneRequest, run
from edgemvp.shrink import shrink
from edgemvp.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from edgemvp.units import unit_space

RATIOS = (0.5, 0.7, 0.8, 0.9, 0.95)
TARGETS = ("fashion5", "T-shirt/top,Trouser,Coat,Sneaker,Ankle boot", "Trouser,Dress,Coat,Sandal,Bag",
           "T-shirt/top,Pullover,Shirt,Sneaker,Ankle boot")
SHARES_32 = (0.08, 0.15, 0.30)
SHARES_224 = (0.08, 0.15, 0.30)
RGB224 = InputSpec(3, 224, IMAGENET_MEAN, IMAGENET_STD)


def _task(name: str):
    return resolve_task(name, None, None) if "," not in name else resolve_task(None, "fashion-mnist", name)


def _remeasure(path: Path, host, runs: int = 300) -> float:
    return measure(path, host, runs=runs, warmup=10, min_seconds=1.0).stats["p90"]


ROUNDS = 5  # interleaved re-measurement rounds per target


def _side_by_side_rounds(paths: list[Path], host, rounds: int = ROUNDS) -> list[list[float]]:
    """Each model's p90 in each of ``rounds`` interleaved rounds (order rotated each round)."""
    p90s: list[list[float]] = [[] for _ in paths]
    for k in range(rounds):
        order = list(range(len(paths)))
        order = order[k % len(order):] + order[:k % len(order)]
        for i in order:
            p90s[i].append(measure(paths[i], host, runs=100, warmup=10, min_seconds=0.3).stats["p90"])
    return p90s


def _side_by_side(paths: list[Path], host, rounds: int = ROUNDS) -> list[float]:
    """Each model's p90: the median over ``rounds`` interleaved rounds."""
    return [float(np.median(p)) for p in _side_by_side_rounds(paths, host, rounds)]


def _prune(task, out: Path, keep: Path, host, **kw) -> dict:
    """One prune; its shipped model is kept at ``keep`` for the side-by-side re-measurement."""
    start = time.perf_counter()
    result = run(PruneRequest(task=task, device="host", out=out, **kw))
    r = result.report
    row = {"accuracy": r["accuracy"]["final"], "p90": r["latency"]["value_ms"], "ratio": r["settings"]["ratio"],
           "round_to": r["settings"]["round_to"], "macs": r["macs"], "seconds": round(time.perf_counter() - start, 1),
           "within_budget": r["latency"]["within_budget"], "budget_ms": r["latency"]["budget_ms"]}
    if r.get("search"):
        row["search"] = r["search"]
    shutil.move(str(out / "model.onnx"), keep)
    shutil.rmtree(out, ignore_errors=True)
    return row


def part_32(host, tmp: Path) -> dict:
    """Uniform ratios aligned and not, then three budgets, per target (32 px, accuracy and latency)."""
    spec = InputSpec(1, 32, (0.2860,), (0.3530,))  # only the shape matters for the skeleton's latency
    dense = SkeletonTimer("resnet18", 5, spec, host, 16, runs=300)(0.01)
    budgets = [round(s * dense, 4) for s in SHARES_32]
    out: dict = {"dense_skeleton_p90": dense, "budgets": budgets, "targets": {}}
    for name in TARGETS:
        task = _task(name)
        rows: dict = {"uniform": [], "budget": [], "greedy": []}
        kept: list[Path] = []
        order: list[dict] = []
        for ratio in RATIOS:
            for round_to in (16, 1):
                kept.append(tmp / f"m{len(kept)}.onnx")
                row = _prune(task, tmp / "u", kept[-1], host, ratio=ratio, round_to=round_to)
                rows["uniform"].append(row)
                order.append(row)
                print(f"{task.name} r={ratio} x{round_to}: {row['accuracy']:.2f}% {row['p90']:.3f} ms "
                      f"{row['seconds']} s", flush=True)
        for budget in budgets:
            kept.append(tmp / f"m{len(kept)}.onnx")
            row = _prune(task, tmp / "b", kept[-1], host, search=True, budget_ms=budget)
            rows["budget"].append(row)
            order.append(row)
            print(f"{task.name} budget {budget} ms: r={row['ratio']} {row['accuracy']:.2f}% {row['p90']:.3f} ms "
                  f"in {len(row['search']['steps'])} steps, {row['seconds']} s", flush=True)
            kept.append(tmp / f"m{len(kept)}.onnx")
            row = _prune(task, tmp / "g", kept[-1], host, search=True, budget_ms=budget, allocate="greedy")
            rows["greedy"].append(row)
            order.append(row)
            alloc = row["search"]["allocation"]
            print(f"{task.name} budget {budget} ms greedy: keeps {alloc['keep_ratio']:.3f} (uniform "
                  f"{alloc['uniform_keep_ratio']:.3f}) {row['accuracy']:.2f}% {row['p90']:.3f} ms, {row['seconds']} s",
                  flush=True)
        for row, p90 in zip(order, _side_by_side(kept, host)):  # order: the rows of kept's models, as kept
            row["p90_remeasured"] = p90
        for path in kept:
            path.unlink()
        for b in rows["budget"]:
            print(f"{task.name} budget {b['budget_ms']} ms: r={b['ratio']} re-measured {b['p90_remeasured']:.3f} ms",
                  flush=True)
        out["targets"][task.name] = rows
    return out


def _skeleton(ratio: float, round_to: int):
    torch.manual_seed(0)
    zeros = {u.name: np.zeros(u.size) for u in unit_space("resnet18").units}
    model = like_trained(create_model("resnet18", 1000, RGB224))  # the statistics of a trained model
    return shrink(model, masks_from_scores("resnet18", zeros, ratio, round_to)).eval() if ratio else model.eval()


def _export_and_time(ratio: float, round_to: int, host, tmp: Path) -> float:
    path = tmp / f"s-{ratio}-{round_to}.onnx"
    export_model(_skeleton(ratio, round_to), "resnet18", RGB224, path, ExportConfig(parity_samples=16))
    p90 = _remeasure(path, host)
    path.unlink()
    return p90


def part_224(host, tmp: Path) -> dict:
    """Latency at 224 px: uniform ratios aligned and not, and the search at three budgets."""
    dense = _export_and_time(0, 1, host, tmp)
    out: dict = {"dense_p90": dense, "uniform": [], "budget": []}
    for ratio in RATIOS:
        for round_to in (16, 1):
            p90 = _export_and_time(ratio, round_to, host, tmp)
            out["uniform"].append({"ratio": ratio, "round_to": round_to, "p90": p90})
            print(f"224 px r={ratio} x{round_to}: {p90:.3f} ms", flush=True)
    timer = SkeletonTimer("resnet18", 1000, RGB224, host, 16)
    for share in SHARES_224:
        budget = round(share * dense, 3)
        start = time.perf_counter()
        try:
            found = search_ratio(timer, "resnet18", budget, "p90", "measured", 16)
        except BudgetExceeded as err:
            out["budget"].append({"budget_ms": budget, "error": str(err)})
            print(f"224 px budget {budget} ms: {err}", flush=True)
            continue
        seconds = time.perf_counter() - start
        p90 = _export_and_time(found.ratio, 16, host, tmp)
        out["budget"].append({"budget_ms": budget, "ratio": found.ratio, "steps": len(found.steps),
                              "candidate_p90": found.chosen.latency_ms, "shipped_p90": p90, "search_seconds": seconds,
                              "within": p90 <= budget, "keep": sum(counts("resnet18", found.ratio, 16))})
        print(f"224 px budget {budget} ms: r={found.ratio} candidate {found.chosen.latency_ms:.3f} shipped "
              f"{p90:.3f} ms ({len(found.steps)} steps, {seconds:.1f} s)", flush=True)
    return out


def _tables(res: dict) -> None:
    a = res["32px"]
    print(f"\n32 px: dense skeleton p90 {a['dense_skeleton_p90']:.3f} ms; budgets {a['budgets']} ms\n")
    print("| target | ratio | aligned x16: acc / p90 ms | unaligned: acc / p90 ms |")
    print("|---|---|---|---|")
    for name, rows in a["targets"].items():
        for ratio in RATIOS:
            al = next(r for r in rows["uniform"] if r["ratio"] == ratio and r["round_to"] == 16)
            un = next(r for r in rows["uniform"] if r["ratio"] == ratio and r["round_to"] == 1)
            print(f"| {name} | {ratio} | {al['accuracy']:.2f}% / {al['p90_remeasured']:.3f} | "
                  f"{un['accuracy']:.2f}% / {un['p90_remeasured']:.3f} |")
    print("\n| target | budget ms | chosen ratio | steps | p90 ms (run / re-measured) | within | accuracy | best "
          "uniform under budget | search s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in a["targets"].items():
        for b in rows["budget"]:
            under = [r for r in rows["uniform"] if r["p90_remeasured"] <= b["budget_ms"]]
            best = max(under, key=lambda r: r["accuracy"]) if under else None
            best_s = f"{best['accuracy']:.2f}% (r={best['ratio']}, x{best['round_to']})" if best else "none"
            print(f"| {name} | {b['budget_ms']} | {b['ratio']} | {len(b['search']['steps'])} | {b['p90']:.3f} / "
                  f"{b['p90_remeasured']:.3f} | {b['within_budget'] and b['p90_remeasured'] <= b['budget_ms']} | "
                  f"{b['accuracy']:.2f}% | {best_s} | {sum(s['seconds'] for s in b['search']['steps']):.1f} |")
    print("\n| target | budget ms | greedy: keeps (uniform keeps) | removals / rounds | p90 ms (run / re-measured) | "
          "within | accuracy | uniform --ratio auto | best uniform under budget | s (uniform auto s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in a["targets"].items():
        for g, b in zip(rows.get("greedy", []), rows["budget"]):
            al = g["search"]["allocation"]
            under = [r for r in rows["uniform"] if r["p90_remeasured"] <= g["budget_ms"]]
            best = max(under, key=lambda r: r["accuracy"]) if under else None
            best_s = f"{best['accuracy']:.2f}%" if best else "none"
            print(f"| {name} | {g['budget_ms']} | {al['keep_ratio']:.3f} ({al['uniform_keep_ratio']:.3f})"
                  f"{' fell back' if al['fell_back'] else ''} | {len(al['removals'])} / {len(al['checks'])} | "
                  f"{g['p90']:.3f} / {g['p90_remeasured']:.3f} | "
                  f"{g['within_budget'] and g['p90_remeasured'] <= g['budget_ms']} | {g['accuracy']:.2f}% | "
                  f"{b['accuracy']:.2f}% | {best_s} | {g['seconds']} ({b['seconds']}) |")
    c = res["224px"]
    print(f"\n224 px: dense p90 {c['dense_p90']:.3f} ms\n")
    print("| ratio | aligned x16 p90 ms | unaligned p90 ms |")
    print("|---|---|---|")
    for ratio in RATIOS:
        al = next(r for r in c["uniform"] if r["ratio"] == ratio and r["round_to"] == 16)
        un = next(r for r in c["uniform"] if r["ratio"] == ratio and r["round_to"] == 1)
        print(f"| {ratio} | {al['p90']:.3f} | {un['p90']:.3f} |")
    print("\n| budget ms | chosen ratio | steps | candidate p90 | shipped p90 (default exporter) | within | search s |")
    print("|---|---|---|---|---|---|---|")
    for b in (b for b in c["budget"] if "error" not in b):
        print(f"| {b['budget_ms']} | {b['ratio']} | {b['steps']} | {b['candidate_p90']:.3f} | {b['shipped_p90']:.3f} | "
              f"{b['within']} | {b['search_seconds']:.1f} |")


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = res["32px"]["targets"]
    fig, axes = plt.subplots(1, len(targets) + 1, figsize=(4.2 * (len(targets) + 1), 3.8))
    for ax, (name, rows) in zip(axes, targets.items()):
        for round_to, marker, label in ((16, "o", "uniform, x16"), (1, "x", "uniform, unaligned")):
            pts = sorted((r["p90_remeasured"], r["accuracy"]) for r in rows["uniform"] if r["round_to"] == round_to)
            ax.plot(*zip(*pts), marker=marker, label=label)
        for b in rows["budget"]:
            ax.axvline(b["budget_ms"], color="grey", lw=0.6, ls="--")
            ax.plot(b["p90_remeasured"], b["accuracy"], "r*", ms=11)
        for g in rows.get("greedy", []):
            ax.plot(g["p90_remeasured"], g["accuracy"], "gD", ms=7)
        ax.plot([], [], "r*", label="--ratio auto at a budget (dashed)")
        ax.plot([], [], "gD", label="... --allocate greedy")
        ax.set_xscale("log")
        ax.set_title(f"{name}, 32 px")
        ax.set_xlabel("measured p90 (ms)")
        ax.set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7)
    c, ax = res["224px"], axes[-1]
    for round_to, marker, label in ((16, "o", "x16"), (1, "x", "unaligned")):
        pts = sorted((r["ratio"], r["p90"]) for r in c["uniform"] if r["round_to"] == round_to)
        ax.plot(*zip(*pts), marker=marker, label=label)
    for b in (b for b in c["budget"] if "error" not in b):
        ax.axhline(b["budget_ms"], color="grey", lw=0.6, ls="--")
        ax.plot(b["ratio"], b["shipped_p90"], "r*", ms=11)
    ax.set_yscale("log")
    ax.set_title("resnet18, 224 px (latency only)")
    ax.set_xlabel("ratio")
    ax.set_ylabel("measured p90 (ms)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _cpu() -> str:
    """The CPU's model name (``platform.processor()`` says only ``x86_64`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=Path("docs/budget.json"))
    parser.add_argument("--png", type=Path, default=Path("docs/budget.png"))
    parser.add_argument("--only", choices=("32", "224"), default=None)
    args = parser.parse_args()
    host = ProfileRegistry().get("host")
    res: dict = {"cpu": _cpu(), "torch_threads": torch.get_num_threads(),
                 "cache": os.environ.get("EDGEMVP_CACHE")}
    if args.json.is_file():  # a part run alone keeps the other's figures
        res = {**json.loads(args.json.read_text()), **res}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "224":
            res["32px"] = part_32(host, Path(tmp))
            args.json.write_text(json.dumps(res, indent=1))
        if args.only != "32":
            res["224px"] = part_224(host, Path(tmp))
            args.json.write_text(json.dumps(res, indent=1))
    if "32px" in res and "224px" in res:
        _tables(res)
        _plot(res, args.png)


if __name__ == "__main__":
    main()
