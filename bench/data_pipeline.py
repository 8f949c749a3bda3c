"""Benchmark: the data pipeline on a folder of JPEGs (issue 24).

Generates (once) a folder of N JPEGs of 500 x 375 px in 10 class folders, then, each in its own process with an
empty decoded-image cache, reads two epochs of 224-px training batches (augmented, as `zoo build` and `prune`
read them) and reports images/s per epoch and the peak resident memory of the process and its loader workers
(summed RSS and PSS, sampled every 50 ms from /proc/*/smaps_rollup):

* ``old``: the loader before issue 24 (batches made in the training thread, every decoded image kept in a dict);
* ``w0``, ``w1``, ``w2``: `edgemvp.data.loader.train_batches` with 0, 1 and 2 worker processes (decoded images
  go to the on-disk uint8 cache, read back with pread).

    python bench/data_pipeline.py --images 20000 --json docs/data_pipeline.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_folder(root: Path, images: int, seed: int = 0) -> None:
    from PIL import Image

    done = root / ".complete"
    if done.exists() and int(done.read_text()) == images:
        return
    rng = np.random.default_rng(seed)
    for i in range(images):
        cls = root / f"class{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        # smooth random colour fields with some texture: JPEGs of a realistic size (~30-60 KB)
        small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        noise = rng.integers(-20, 20, (375, 500, 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        img.save(cls / f"{i:06d}.jpg", quality=90)
    done.write_text(str(images))


def _tree_memory() -> tuple[int, int]:
    """Resident bytes of this process and its children (loader workers), summed: RSS (shared pages such as
    torch's libraries count once per process) and PSS (shared pages divided among their sharers)."""
    me = os.getpid()
    rss = pss = 0
    for pid in [me] + [int(p) for p in Path(f"/proc/{me}/task/{me}/children").read_text().split()]:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def _old_batches(view, spec, batch_size: int, seed: int):
    """The loader as it was: one generator in this thread; decoded images memoised for ever."""
    import torch
    from edgemvp.data.transforms import augment, fit_images, to_input

    split = view.split
    memo: dict[int, torch.Tensor] = {}

    def one(i: int) -> torch.Tensor:
        if i not in memo:
            img = np.asarray(split._get(i).convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
            memo[i] = fit_images(torch.from_numpy(img.copy())[None], spec.size, split.fit, spec.crop_pct,
                                 spec.interpolation)[0]
        return memo[i]

    gen = torch.Generator().manual_seed(seed)
    targets = torch.from_numpy(view.targets)
    n = len(view)
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            pick = order[start:start + batch_size].numpy()
            x = torch.stack([one(int(i)) for i in view.indices[pick]])
            yield to_input(augment(x, gen, view.hflip, pad=max(1, spec.size // 16)), spec), targets[pick]


def child(folder: str, mode: str, size: int, batch: int, epochs: int) -> dict:
    import torch

    torch.set_num_threads(2)
    from edgemvp.data.datasets import load_imagefolder
    from edgemvp.data.loader import LabeledView, train_batches
    from edgemvp.spec import InputSpec

    ds = load_imagefolder(Path(folder))
    view = LabeledView(ds.train, np.arange(len(ds.train)), ds.train.labels, ds.hflip)
    spec = InputSpec(3, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), crop_pct=0.875, interpolation="bicubic")
    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, pss = _tree_memory()
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    if mode == "old":
        batches = _old_batches(view, spec, batch, 0)
    else:
        batches = train_batches(view, spec, batch, 0, workers=int(mode[1:]))
    per_epoch = len(view) // batch
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _, (x, _y) in zip(range(per_epoch), batches):
            assert x.shape == (batch, 3, size, size)
        rates.append(round(per_epoch * batch / (time.perf_counter() - start), 1))
    stop.set()
    return {"mode": mode, "images_per_s": rates, "peak_rss_mb": round(peak[0] / 2**20, 1),
            "peak_pss_mb": round(peak[1] / 2**20, 1), "train_images": len(view)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "edgemvp-jpegs"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--modes", default="old,w0,w1,w2")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.folder, args.child, args.size, args.batch, args.epochs)))
        return
    folder = Path(args.folder) / str(args.images)
    t = time.perf_counter()
    make_folder(folder, args.images)
    print(f"folder {folder}: {args.images} JPEGs 500x375 ({time.perf_counter() - t:.0f} s)", flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    results = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as cache:  # an empty decoded-image cache per run
            env = {**os.environ, "EDGEMVP_CACHE": cache}
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--folder", str(folder),
                                  "--size", str(args.size), "--batch", str(args.batch), "--epochs",
                                  str(args.epochs)], env=env, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        results.append(row)
    report = {"command": "python bench/data_pipeline.py " + " ".join(sys.argv[1:]), "cpu": cpu,
              "cores": os.cpu_count(), "images": args.images, "size": args.size, "batch": args.batch,
              "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
