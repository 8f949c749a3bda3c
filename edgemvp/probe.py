"""Probes of this machine's kernels, run once in a child process and cached on disk.

**oneDNN convolution training.** On a 2-core AMD EPYC without AVX-512 (family 25 model 1, torch 2.13.0),
oneDNN's weight gradient of small strided 1x1 convolutions — the shortcuts of a 90%-pruned ResNet, e.g. 6 -> 13
channels on a 4 x 4 map — was wrong: with 2 threads it differed from run to run (in both memory layouts
inside a network), and with 1 thread the channels-last kernel corrupted the heap (glibc aborted with
"corrupted size vs. prev_size"). Every other convolution of such a network repeated exactly, and so did a 1x1
convolution of stride 1 on the subsampled input, which is the same function. Because the faulty kernel can
crash the process that runs it, the probe runs it in a child process: a pruned-ResNet-shaped network and the
shapes above, a few backward passes each, in both layouts, at the caller's thread count. Its verdict:

* ``sound``: every gradient repeated exactly; training runs as it always did (oneDNN, channels-last).
* ``strided-1x1``: only with the strided 1x1 convolutions computed as subsample + stride-1 1x1 (a second child
  checks that); training computes them so (:func:`edgemvp.train.train_steps`), everything else unchanged.
* ``unsound``: not even then; training runs without oneDNN (correct, several times slower).

The verdict is cached in ``<cache>/probes/`` per torch version, CPU (model name and ISA flags) and thread
count, so the child (a few seconds, mostly importing torch) runs once per machine.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import subprocess
import sys
from pathlib import Path

import torch

from edgemvp.paths import atomic_write_bytes, cache_dir

logger = logging.getLogger(__name__)

PROBE_VERSION = 2
_CHILD = r"""
import sys, torch, torch.nn as nn
torch.set_num_threads(int(sys.argv[1]))
gen = torch.Generator().manual_seed(0)

class Net(nn.Module):  # the shapes of a 90%-pruned resnet18 at 16 px: 6 -> 13 channels, 4 x 4 -> 2 x 2
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, 2, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.body = nn.Sequential(nn.Conv2d(6, 13, 3, 2, 1, bias=False), nn.BatchNorm2d(13), nn.ReLU(),
                                  nn.Conv2d(13, 13, 3, 1, 1, bias=False), nn.BatchNorm2d(13))
        self.short = nn.Sequential(nn.Conv2d(6, 13, 1, 2, bias=False), nn.BatchNorm2d(13))
        self.head = nn.Linear(13, 3)
    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.body(x) + self.short(x))
        return self.head(x.mean((2, 3)))

def subsampled(module, args, output):  # the same function as a strided 1x1 convolution, by another kernel
    s = module.stride
    return torch.nn.functional.conv2d(args[0][:, :, ::s[0], ::s[1]], module.weight, module.bias, 1, 0, 1,
                                      module.groups)

def grads(model, x):
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    return b"".join(p.grad.numpy().tobytes() for p in model.parameters())

def prepared(model):
    if sys.argv[2] == "workaround":
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1):
                m.register_forward_hook(subsampled)
    return model

for layout in (torch.channels_last, torch.contiguous_format):
    torch.manual_seed(0)
    net = prepared(Net()).to(memory_format=layout)
    x = torch.randn(32, 1, 16, 16, generator=gen).contiguous(memory_format=layout)
    if len({grads(net, x) for _ in range(6)}) > 1:
        print("varies"); sys.exit(0)
    for cin, cout, side in ((4, 8, 8), (2, 3, 8), (6, 13, 4)):
        conv = prepared(nn.Conv2d(cin, cout, 1, 2, bias=False)).to(memory_format=layout)
        x = torch.randn(32, cin, side, side, generator=gen).contiguous(memory_format=layout)
        if len({grads(conv, x) for _ in range(6)}) > 1:
            print("varies"); sys.exit(0)
print("ok")
"""


def cpu_key() -> str:
    """The CPU as far as kernels care: model name and ISA flags (Linux), else the platform's description."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))][:2]
        text = "\n".join(lines)
    except OSError:
        text = platform.processor() or platform.machine()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _verdict_file(threads: int) -> Path:
    name = f"onednn-train-v{PROBE_VERSION}-torch{torch.__version__}-{cpu_key()}-t{threads}.json"
    return cache_dir() / "probes" / name.replace("+", "_")


def _child(threads: int, mode: str) -> tuple[bool, str]:
    """Run the probe in a child process: (gradients repeated and the child exited cleanly, what it said)."""
    try:
        child = subprocess.run([sys.executable, "-c", _CHILD, str(threads), mode], capture_output=True, text=True,
                               timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"the probe did not finish ({exc.__class__.__name__})"
    said = child.stdout.strip() or f"exit code {child.returncode}: {child.stderr.strip()[-200:]}"
    return child.returncode == 0 and said == "ok", said


@functools.lru_cache(maxsize=8)
def onednn_training(threads: int) -> str:
    """How CPU convolution training must run here at ``threads`` threads: ``sound``, ``strided-1x1`` or
    ``unsound`` (see the module doc).

    Cached in process and on disk; the first call on a machine runs the child probe (a few seconds).
    """
    path = _verdict_file(threads)
    try:
        verdict = json.loads(path.read_text())["verdict"]
        if verdict in ("sound", "strided-1x1", "unsound"):
            return verdict
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ok, said = _child(threads, "plain")
    verdict, why = "sound", said
    if not ok:
        fixed, said_fixed = _child(threads, "workaround")
        verdict = "strided-1x1" if fixed else "unsound"
        why = f"plain: {said}; subsampled 1x1: {said_fixed}"
        logger.debug("oneDNN convolution gradients are not reproducible here (%s): training %s", why,
                    "computes strided 1x1 convolutions as subsample + 1x1" if fixed else "runs without oneDNN")
    atomic_write_bytes(path, json.dumps({"verdict": verdict, "why": why, "threads": threads,
                                         "torch": torch.__version__}).encode())
    return verdict
