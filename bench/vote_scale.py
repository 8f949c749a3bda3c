"""Neighbour search + vote over a large synthetic zoo (masks only): time and memory.

    python bench/vote_scale.py --entries 100000 --zoo /tmp/zoo100k

The zoo's index is filled directly with synthetic entries (random 5-class Fashion-MNIST tasks, random resnet18
masks at r = 0.9; no weight files: ranking and voting never open them). Then, in a fresh process, the timed
part runs as ``edgemvp prune`` runs it: open the store, read every entry's task (one query), rank by WordNet
task similarity (class x class matrix + vectorised best match), pick the N nearest, read their mask bits (one
query) and sample the target masks. WordNet's reader is loaded before the clock starts (a one-off per process;
its time is printed separately). Peak memory is the process's max RSS (it includes torch, imported by the
unit space).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fill(zoo: Path, entries: int, seed: int) -> None:
    from edgemvp.data.datasets import FASHION_MNIST_CLASSES
    from edgemvp.units import unit_space
    from edgemvp.zoo.store import ZooStore

    space = unit_space("resnet18")
    rng = np.random.default_rng(seed)
    base = "f" * 64
    with ZooStore.open(zoo, create=True) as store:
        if len(store) >= entries:
            return
        chunk = 5000
        for start in range(len(store), entries, chunk):
            n = min(chunk, entries - start)
            parts = []
            for u in space.units:  # keep 10% of every group, at random
                k = max(1, round(0.1 * u.size))
                order = np.argsort(rng.random((n, u.size)), axis=1)[:, :k]
                bits = np.zeros((n, u.size), dtype=bool)
                np.put_along_axis(bits, order, True, axis=1)
                parts.append(bits)
            packed = np.packbits(np.concatenate(parts, axis=1), axis=1)
            total = sum(u.size for u in space.units)
            rows, classes = [], []
            for i in range(n):
                pick = [FASHION_MNIST_CLASSES[j] for j in sorted(rng.choice(10, 5, replace=False))]
                eid = f"{start + i:064x}"
                rows.append((eid, f"job{start + i}", "resnet18", base, "fashion-mnist", f"t{start + i}",
                             json.dumps(pick), "synthetic", 90.0, 0, 0, 0.1, packed[i].tobytes(), total, None))
                classes += [(eid, c) for c in pick]
            store.db.execute("BEGIN")
            store.db.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            store.db.executemany("INSERT INTO entry_classes VALUES (?,?)", classes)
            store.db.execute("COMMIT")


def timed(zoo: Path, neighbours: int, temperature: float) -> dict:
    from edgemvp.data.tasks import NAMED_TASKS
    from edgemvp.data.wordnet import wordnet
    from edgemvp.mvp.similarity import Taxonomy, wordnet_similarity
    from edgemvp.units import unit_space
    from edgemvp.mvp.rank import nearest
    from edgemvp.mvp.vote import vote
    from edgemvp.zoo.store import ZooStore

    unit_space("resnet18")  # traced once per process, like the arch's model
    t0 = time.perf_counter()
    wordnet()
    wordnet_s = time.perf_counter() - t0
    task = NAMED_TASKS["fashion5"]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with ZooStore.open(zoo) as store:
        ids, tasks = store.task_table("f" * 64)
        t1 = time.perf_counter()
        sims = wordnet_similarity([(task.dataset, c) for c in task.classes], tasks, Taxonomy())
        t2 = time.perf_counter()
        top = nearest(sims, neighbours)
        rows = store.mask_rows([ids[i] for i in top])
        result = vote("resnet18", rows, 0.9, temperature, seed=0)
    t3 = time.perf_counter()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"entries": len(ids), "read_tasks_s": round(t1 - t0, 3), "rank_s": round(t2 - t1, 3),
            "nearest_masks_vote_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3),
            "wordnet_load_s": round(wordnet_s, 3), "peak_rss_mb": round(rss1 / 1024, 1),
            "rss_growth_mb": round((rss1 - rss0) / 1024, 1), "best_similarity": round(float(sims[top[0]]), 4),
            "kept_units": sum(len(k) for k in result.masks.kept.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--zoo", type=Path, default=Path("/tmp/edgemvp-zoo100k"))
    ap.add_argument("--neighbours", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(timed(args.zoo, args.neighbours, args.temperature)))
        return
    t0 = time.perf_counter()
    fill(args.zoo, args.entries, args.seed)
    print(f"zoo with {args.entries} synthetic entries ready in {time.perf_counter() - t0:.1f} s "
          f"({sum(p.stat().st_size for p in args.zoo.iterdir()) / 2**20:.1f} MB on disk)")
    for _ in range(args.repeats):  # each in a fresh process: nothing cached between runs but the OS page cache
        out = subprocess.run([sys.executable, __file__, "--child", "--zoo", str(args.zoo), "--neighbours",
                              str(args.neighbours), "--temperature", str(args.temperature)],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip())


if __name__ == "__main__":
    main()
