"""Zoo build benchmark: accuracy and time per task of single-task pruners, and rebuild-from-store checks.

Examples (results in docs/results.md):
    # learning-rate calibration of IFP on 2 zoo tasks
    python bench/zoo_build.py --tasks 2 --iters 1000 --lrs 0.005,0.01,0.05,0.1
    # the acceptance zoo: 12 tasks, IFP@1000, r = 0.9, every entry rebuilt from the store and re-evaluated
    python bench/zoo_build.py --tasks 12 --iters 1000 --rebuild
    # AHNP on a small ViT (needs a cached vit_tiny base: edgemvp pretrain --arch vit_tiny)
    python bench/zoo_build.py --arch vit_tiny --pruner ahnp --tasks 3 --iters 500 --rebuild
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgemvp.data.datasets import get_dataset
from edgemvp.data.loader import eval_batches
from edgemvp.data.tasks import task_view
from edgemvp.pruners import PruneConfig
from edgemvp.train import accuracy
from edgemvp.zoo import ZooStore
from edgemvp.zoo.build import BuildSpec, build


def rebuild_check(store: ZooStore, dataset: str) -> list[tuple[str, float, float]]:
    """Rebuild every entry from the store and re-evaluate it: (id, recorded acc, rebuilt acc)."""
    ds = get_dataset(dataset)
    out = []
    for row in store.rows():
        entry = store.get(row.id)
        model = entry.load_model()
        view = task_view(entry.manifest.task, ds, "test")
        acc = accuracy(model, eval_batches(view, entry.manifest.base.input_spec), torch.device("cpu"))
        out.append((row.id, row.test_acc, acc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--pruner", default="ifp-activation")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--lrs", default="", help="comma-separated learning rates (default: the pruner's)")
    ap.add_argument("--zoo", default=None, help="zoo folder (default: a temporary one per lr)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild every entry from the store and re-evaluate")
    args = ap.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else [None]
    print(f"| pruner | lr | iters | tasks | mean test acc | min | s/task (median) | torch threads |")
    print("|---|---|---|---|---|---|---|---|")
    for lr in lrs:
        cfg = PruneConfig(ratio=args.ratio, iters=args.iters, lr=lr)
        spec = BuildSpec(args.arch, args.dataset, args.tasks, 5, args.pruner, cfg)
        folder = Path(args.zoo) if args.zoo else Path(tempfile.mkdtemp(prefix="zoo-bench-"))
        start = time.perf_counter()
        report = build(spec, folder)
        with ZooStore.open(folder) as store:
            rows = [r for r in store.rows() if r.id in report.ids]
            accs = [r.test_acc for r in rows]
            secs = [r.build_seconds for r in rows if r.build_seconds]
            print(f"| {args.pruner} | {lr or 'default'} | {args.iters} | {len(rows)} | {statistics.mean(accs):.2f} | "
                  f"{min(accs):.2f} | {statistics.median(secs) if secs else float('nan'):.1f} | "
                  f"{torch.get_num_threads()} |", flush=True)
            if args.rebuild:
                checks = rebuild_check(store, args.dataset)
                worst = max(abs(a - b) for _, a, b in checks)
                for entry_id, recorded, rebuilt in checks:
                    print(f"  rebuilt {entry_id[:12]}: recorded {recorded:.2f}%, rebuilt {rebuilt:.2f}%")
                print(f"  {len(checks)} entries rebuilt, largest |difference| {worst:.3f} pt; "
                      f"build wall {time.perf_counter() - start:.0f} s; zoo {folder}")


if __name__ == "__main__":
    main()
