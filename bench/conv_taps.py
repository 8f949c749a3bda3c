"""Microbenchmark: does onnxruntime skip kernel taps that only see zero padding? (issue 5, cost model v3)

Usage: python bench/conv_taps.py
Times (2 threads, median of 300 runs after 30 warm-up runs) stacks of k x k convolutions (padding k // 2) over
small square maps, 3x3 against 1x1 of the same width. If a 3x3 convolution over a 1x1 map costs what a 1x1 one
costs, the eight padding taps are neither computed nor their weights read (at 512 channels a layer's 3x3
weights are 9.4 MB). 500 channels take the channel-misaligned (im2col) path instead of the blocked one.
Last, what the cost model makes of it: nominal and effective (used-tap) weight bytes of the dense resnet18 at 32 px.
"""
from __future__ import annotations

import io
import time

import numpy as np
import onnxruntime as ort
import torch


def bench(k: int, size: int, channels: int = 512, layers: int = 1, runs: int = 300) -> float:
    """Median ms of a stack of ``layers`` k x k convolutions over a ``size`` x ``size`` map, batch 1."""
    model = torch.nn.Sequential(*[torch.nn.Conv2d(channels, channels, k, padding=k // 2) for _ in range(layers)]).eval()
    x = torch.randn(1, channels, size, size)
    buf = io.BytesIO()
    torch.onnx.export(model, x, buf, dynamo=False, opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(30):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    for layers in (1, 8):
        for size in (1, 2, 4, 8):
            a, b = bench(3, size, layers=layers), bench(1, size, layers=layers)
            print(f"{layers} layer(s) ({layers * 9.4:.0f} MB of 3x3 weights), {size}x{size} map: 3x3 {a:.3f} ms, "
                  f"1x1 {b:.3f} ms, ratio {a / b:.2f}", flush=True)
    for channels in (500, 512):
        a, b = bench(3, 1, channels, layers=4), bench(1, 1, channels, layers=4)
        print(f"{channels} channels, 4 layers, 1x1 map: 3x3 {a:.3f} ms, 1x1 {b:.3f} ms, ratio {a / b:.2f}", flush=True)
    import tempfile
    from pathlib import Path

    from edgemvp.deploy.costmodel import op_table
    from edgemvp.deploy.devices import ReferenceModel
    from edgemvp.deploy.latency import build_reference_onnx

    with tempfile.TemporaryDirectory() as tmp:
        table = op_table(build_reference_onnx(ReferenceModel("resnet18", 32, 1, 10, 0.0), Path(tmp) / "r.onnx"))
    _, weight = table.effective()
    print(f"resnet18 dense, 1x32 px: weights {table.weight_bytes.sum() / 1e6:.1f} MB nominal, "
          f"{weight.sum() / 1e6:.1f} MB in used taps")


if __name__ == "__main__":
    main()
