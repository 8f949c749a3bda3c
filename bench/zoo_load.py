"""Load on the zoo server: C concurrent clients x R mixed requests against ``edgemvp zoo serve`` on loopback.

    python bench/zoo_load.py --clients 20 --requests 200

The server runs as its own process (``python -m edgemvp zoo serve``, 127.0.0.1 only) over a zoo of synthetic
entries of a cached base (default: the resnet18 base of Fashion-MNIST, ``edgemvp pretrain``): random 5-class
Fashion-MNIST tasks with random masks at r = 0.9 and random weights, so WordNet ranks them and every vote
averages real full-size tensors. Each client is a thread with its own HTTP connection that sends a seeded mix
of requests: health, entry lists, manifests, weights downloads (sha256 checked), ``/neighbours`` (WordNet) and
``/vote`` (mvp, 3 neighbours; payload sha256 checked and decoded). An error is any non-2xx answer, transport
failure or checksum mismatch. Printed: per kind count, p50, p99 and max latency (ms, client side), errors,
wall time and throughput; ``--json`` writes them.

``--hostile K`` runs the load twice on the same server: first the normal clients alone, then the same normal
clients beside K hostile clients that send, back to back, 1,000-class ``/neighbours`` requests and oversized
votes (1,000-class tasks, 100 neighbour ids, bodies over the 1 MiB JSON limit). Reported for both phases: the
normal clients' errors and latencies, the hostile answers by status, and the server's peak RSS (VmHWM) and RSS.

    python bench/zoo_load.py --clients 20 --requests 200 --hostile 2
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIX = {"health": 10, "entries": 15, "manifest": 20, "weights": 20, "neighbours": 30, "vote": 5}


def fill(zoo: Path, cache: Path | None, arch: str, dataset: str, entries: int, seed: int) -> None:
    """A zoo of synthetic entries (random masks, random weights) of the cached base."""
    import torch

    from edgemvp.data.datasets import get_dataset
    from edgemvp.data.tasks import random_tasks
    from edgemvp.masks import random_masks
    from edgemvp.models.base import find_base
    from edgemvp.models.weights import sha256_bytes, weights_bytes
    from edgemvp.shrink import build_pruned, pruned_metadata
    from edgemvp.manifest import BaseRef, EntryManifest
    from edgemvp.zoo.store import ZooStore

    base = find_base(arch, dataset, cache)
    if base is None:
        sys.exit(f"no cached {arch} base of {dataset}: run 'edgemvp pretrain --arch {arch} --dataset {dataset}'")
    ref = BaseRef(base.arch, base.dataset, base.weights_sha256, base.input_spec)
    with ZooStore.open(zoo, create=True) as store:
        for i, task in enumerate(random_tasks(get_dataset(dataset), entries, 5, seed)):
            masks = random_masks(arch, 0.9, seed + i, base_sha256=base.weights_sha256)
            torch.manual_seed(seed + i)
            model = build_pruned(arch, 5, base.input_spec, masks)
            weights = weights_bytes(model.state_dict(), pruned_metadata(masks, base.input_spec, 5))
            store.put(EntryManifest(task, ref, masks, "synthetic", {"seed": seed + i}, {"test_acc": 50.0},
                                    sha256_bytes(weights), f"synthetic-{seed}-{i}"), weights)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(zoo: Path, cache: Path | None, port: int, vote_workers: int, threads: int) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cache is not None:
        env["EDGEMVP_CACHE"] = str(cache)
    proc = subprocess.Popen([sys.executable, "-m", "edgemvp", "zoo", "serve", "--zoo", str(zoo), "--port", str(port),
                             "--vote-workers", str(vote_workers), "--threads", str(threads)], env=env)
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("the server did not start")


def client(url: str, k: int, requests: int, ids: list[str], classes: list[str], seed: int,
           out: list[tuple[str, float, bool]]) -> None:
    """One client: ``requests`` requests drawn from MIX (seeded), timed one by one."""
    import httpx

    from edgemvp.models.weights import sha256_bytes

    rng = random.Random(seed * 1000 + k)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=requests)
    with httpx.Client(base_url=url, timeout=600) as http:
        for kind in kinds:
            entry = rng.choice(ids)
            task = {"dataset": "fashion-mnist", "classes": rng.sample(classes, 5)}
            start = time.perf_counter()
            try:
                if kind == "health":
                    r = http.get("/health")
                elif kind == "entries":
                    r = http.get("/entries", params={"limit": 50, "offset": rng.randrange(len(ids))})
                elif kind == "manifest":
                    r = http.get(f"/entries/{entry}")
                elif kind == "weights":
                    r = http.get(f"/entries/{entry}/weights")
                elif kind == "neighbours":
                    r = http.post("/neighbours", json={"task": task, "limit": 3})
                else:
                    r = http.post("/vote", json={"task": task, "neighbours": 3, "seed": rng.randrange(2**31)})
                ok = r.is_success and (kind not in ("weights", "vote")
                                       or sha256_bytes(r.content) == r.headers.get("x-edgemvp-sha256"))
                ok = ok and (kind != "manifest" or sha256_bytes(r.content) == entry)
            except Exception:  # noqa: BLE001 - a transport failure is an error to count
                ok = False
            out.append((kind, time.perf_counter() - start, ok))


def hostile(url: str, k: int, classes: list[str], ids: list[str], stop: threading.Event,
            statuses: list[int]) -> None:
    """One hostile client: oversized rankings and votes back to back until ``stop`` (statuses recorded)."""
    import httpx

    rng = random.Random(10_000 + k)
    many = {"dataset": "fashion-mnist", "classes": [f"{rng.choice(classes)} {i}" for i in range(1000)]}
    bodies = [("/neighbours", {"task": many, "limit": 1000}),
              ("/vote", {"task": many, "neighbours": 100}),
              ("/vote", {"task": {"dataset": "fashion-mnist", "classes": classes[:5]}, "method": "mvp",
                         "neighbour_ids": (ids * 100)[:100], "neighbours": 100}),
              ("/vote", {"task": {"dataset": "fashion-mnist", "classes": ["x" * 300] * 5000}})]
    with httpx.Client(base_url=url, timeout=600) as http:
        while not stop.is_set():
            path, body = rng.choice(bodies)
            try:
                statuses.append(http.post(path, json=body).status_code)
            except httpx.HTTPError:
                statuses.append(0)  # a dropped connection


def rss_sampler(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """The server's resident memory (kB) every 50 ms, and its high-water mark at the end."""
    status = Path(f"/proc/{pid}/status")
    while not stop.wait(0.05):
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                peak.append(int(line.split()[1]))


def summarise(results: list[tuple[str, float, bool]], wall: float) -> dict:
    out: dict = {"requests": len(results), "errors": sum(not ok for _, _, ok in results),
                 "wall_s": round(wall, 1), "throughput_rps": round(len(results) / wall, 1), "kinds": {}}
    for kind in MIX:
        ms = np.array([t for k, t, _ in results if k == kind]) * 1000
        if len(ms):
            out["kinds"][kind] = {"count": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                                  "p99_ms": round(float(np.percentile(ms, 99)), 1),
                                  "max_ms": round(float(ms.max()), 1),
                                  "errors": sum(not ok for k, _, ok in results if k == kind)}
    return out


def phase(url: str, pid: int, args: argparse.Namespace, ids: list[str], classes: list[str], n_hostile: int) -> dict:
    """The normal clients' load, beside ``n_hostile`` hostile clients; with the server's memory."""
    results: list[tuple[str, float, bool]] = []
    statuses: list[int] = []
    stop, rss = threading.Event(), []
    side = [threading.Thread(target=hostile, args=(url, k, classes, ids, stop, statuses)) for k in range(n_hostile)]
    side.append(threading.Thread(target=rss_sampler, args=(pid, stop, rss)))
    threads = [threading.Thread(target=client, args=(url, k, args.requests, ids, classes, args.seed, results))
               for k in range(args.clients)]
    for t in side:
        t.start()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary = summarise(results, time.perf_counter() - start)
    stop.set()
    for t in side:
        t.join()
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    summary["server_rss_mb"] = {"max_sampled": round(max(rss, default=0) / 1024, 1), "high_water": round(hwm / 1024, 1)}
    if n_hostile:
        summary["hostile"] = {"clients": n_hostile, "requests": len(statuses),
                              "statuses": {str(c): statuses.count(c) for c in sorted(set(statuses))}}
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=200, help="per client")
    p.add_argument("--entries", type=int, default=30, help="synthetic zoo entries")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--cache", type=Path, default=None, help="cache with the base [default: EDGEMVP_CACHE or ~/.cache]")
    p.add_argument("--vote-workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="server torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hostile", type=int, default=0, help="hostile clients in a second phase")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from edgemvp.data.datasets import get_dataset
    from edgemvp.zoo.store import ZooStore

    with tempfile.TemporaryDirectory(prefix="zoo-load-") as tmp:
        zoo = Path(tmp) / "zoo"
        fill(zoo, args.cache, args.arch, args.dataset, args.entries, args.seed)
        with ZooStore.open(zoo) as store:
            ids = [r.id for r in store.rows()]
        port = free_port()
        proc = serve(zoo, args.cache, port, args.vote_workers, args.threads)
        try:
            classes = list(get_dataset(args.dataset).classes)
            url = f"http://127.0.0.1:{port}"
            summary = phase(url, proc.pid, args, ids, classes, 0)
            if args.hostile:
                summary = {"alone": summary, "with_hostile": phase(url, proc.pid, args, ids, classes, args.hostile)}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    summary["setup"] = {k: v for k, v in vars(args).items() if k != "json"} | {"cache": str(args.cache)}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
