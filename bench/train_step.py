"""Benchmark: seconds per resnet18 training step at 32 px (fp32 / channels-last / bf16), synthetic batch.

Usage: python bench/train_step.py
"""
import time, torch, torch.nn.functional as F
torch.set_num_threads(2)
from edgemvp.models.factory import create_model
from edgemvp.spec import InputSpec
spec = InputSpec(1, 32, (0.286,), (0.353,))
def bench(bs, cl=False, bf16=False, n=15):
    m = create_model('resnet18', 10, spec)
    if cl: m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(bs, 1, 32, 32); y = torch.randint(0, 10, (bs,))
    if cl: x = x.to(memory_format=torch.channels_last)
    for i in range(n + 3):
        if i == 3: t = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(m(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    return (time.perf_counter() - t) / n
for bs in (128, 256):
    print(bs, 'fp32', round(bench(bs), 4), 'CL', round(bench(bs, cl=True), 4), 'bf16', round(bench(bs, bf16=True), 4), 'bf16+CL', round(bench(bs, True, True), 4))
