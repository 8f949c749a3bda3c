"""Step time of the default base's pre-training (dense resnet18, 32 px grey, batch 256, fp32 on a CPU without
native bf16) with oneDNN's convolutions as they are (``sound``) and with the strided-1x1 workaround of
:mod:`edgemvp.probe`, interleaved, 6 steps each.

    python bench/pretrain_step.py
"""
import time, torch, itertools
import edgemvp.train as T
from edgemvp.models.factory import create_model
from edgemvp.spec import InputSpec
spec = InputSpec(1, 32, (0.5,), (0.25,))
x = torch.randn(256, 1, 32, 32); y = torch.randint(0, 10, (256,))
for verdict in ("sound", "strided-1x1", "sound", "strided-1x1"):
    T._layout = lambda m, d, v=verdict: (torch.channels_last, v)
    m = create_model("resnet18", 10, spec)
    t = time.perf_counter()
    T.train_steps(m, itertools.repeat((x, y)), 6, T.OptimConfig(), amp=True)
    print(verdict, f"{(time.perf_counter()-t)/6:.3f} s/step", torch.get_num_threads(), flush=True)
