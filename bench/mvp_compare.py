"""MVP against its baselines through the same ``edgemvp prune`` path: accuracy and wall time.

    python bench/mvp_compare.py --task fashion5 --device jetson --seeds 0,1,2 --methods mvp,ifp,random,transfer

Each (method, seed) is one ``edgemvp.pipeline.run`` with J fine-tune steps (default 100) from the zoo (default:
the default zoo in the cache); accuracy is on the task's test split. Runs are sequential, so wall times are
not disturbed by each other. Prints a markdown table (mean over seeds, then every run) and writes a JSON file.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="fashion5")
    ap.add_argument("--device", default="jetson")
    ap.add_argument("--zoo", type=Path, default=None)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--methods", default="mvp,ifp,random,transfer")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--neighbours", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.25)
    ap.add_argument("--no-bn-reestimate", action="store_true", help="Keep the averaged BatchNorm statistics.")
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgemvp-compare"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from edgemvp.data.tasks import resolve_task
    from edgemvp.pipeline import PruneRequest, run

    torch.set_num_threads(max(1, torch.get_num_threads()))
    task = resolve_task(args.task)
    rows = []
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            req = PruneRequest(task, args.device, zoo=args.zoo, method=method, iters=args.iters,
                               neighbours=args.neighbours, temperature=args.temperature, seed=seed,
                               bn_reestimate=not args.no_bn_reestimate,
                               out=args.out / f"{method}-{seed}")
            t0 = time.perf_counter()
            r = run(req, args.cache_dir).report
            wall = time.perf_counter() - t0
            row = {"method": method, "seed": seed, "acc": r["accuracy"]["final"], "init": r["accuracy"]["init"],
                   "init_before_bn": r["accuracy"]["init_before_bn"], "wall_s": round(wall, 1),
                   "finetune_s": r["timings"].get("finetune"), "neighbours": [n["task"] for n in r["neighbours"]]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.task}, J = {args.iters}, N = {args.neighbours}, tau = {args.temperature}, seeds {args.seeds}"
          f"{', BatchNorm statistics averaged (not re-estimated)' if args.no_bn_reestimate else ''}\n")
    print("| method | test acc (mean of seeds) | per seed | acc at J=0 (after BN) | wall s (mean) |")
    print("|---|---|---|---|---|")
    for method in args.methods.split(","):
        mine = [r for r in rows if r["method"] == method]
        inits = [r["init"] for r in mine if r["init"] is not None]
        print(f"| {method} | {statistics.mean(r['acc'] for r in mine):.2f} | "
              f"{' / '.join(format(r['acc'], '.2f') for r in mine)} | "
              f"{format(statistics.mean(inits), '.2f') if inits else 'n/a'} | "
              f"{statistics.mean(r['wall_s'] for r in mine):.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
