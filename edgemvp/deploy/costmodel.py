"""The latency cost model: per-operator FLOPs and bytes of an ONNX graph, and per-device constants fitted to
reference latencies.

The graph is made static at batch 1 and optimised by onnxruntime at the *basic* level (constant folding,
Conv+BatchNorm fusion: the graph a runtime executes, before any hardware-specific layout), then shapes are
inferred and each node becomes one row of an :class:`OpTable`. A node costs a smooth roofline of compute and
activation traffic, plus the time to stream its weights, plus a per-operator overhead::

    t_op = sqrt(compute² + memory²) + weights + overhead [+ weight bytes / pack rate for channel-misaligned convolutions]
    compute = flops' / F[class]           class: conv, conv (channels not a multiple of the SIMD block), matmul, other
    memory  = activation bytes / B_act [+ im2col bytes / B_im2col for channel-misaligned convolutions]
    weights = weight bytes' · (1 / B_cache + spill / B_dram)
    flops'  = flops · in-bounds tap share;  weight bytes' = weight bytes · used tap share   (convolutions)
    im2col bytes = 4 · output pixels · Cin/groups · kh · kw  (= 4 · flops / (2 · Cout), the fp32 column buffer)
    spill   = max(0, 1 - C / all weight bytes')   (the share of the weights that cannot stay in the cache C)
    latency = Σ t_op + run overhead

The tap shares exist because onnxruntime's convolutions skip kernel taps that fall in the zero padding: a 3x3
convolution over a 1x1 map does a ninth of its nominal work and reads a ninth of its weights (measured, see
:meth:`OpTable.effective`). Without them a dense ResNet at 32 px, whose last stage sees 1x1 maps, was estimated
at twice its measured latency.

Weight streaming is added to, not overlapped with, the node's compute, and the cache the weights can stay in is a
fitted constant (its prior is the hardware's last-level cache): at batch 1 a convolution or GEMM packs its
weight panels before it computes with them, and on a shared machine (a VM, or other tenants on the same L3) the
share of the cache a model keeps is well below the nominal size. Both were chosen by leave-one-out
cross-validation on the host's calibration suite (``bench/cost_model_select.py``); on this machine the fitted
cache was about 8 MB of a 32 MB L3, and the fitted DRAM rate rose from 8 to 19 GB/s, nearer the 26 GB/s that
``bench/conv_taps.py`` implies.

The channel split exists because onnxruntime's blocked (NCHWc) convolution kernels need channel counts that
are multiples of the SIMD width and otherwise fall back to im2col + GEMM: the weights are packed on every run and
the input is expanded into a column buffer kh·kw times its size, which costs memory traffic in proportion to the
convolution's work per output channel (on this machine the term took the 90%-pruned ResNets' estimates from
-23..-39% to within 20%, docs/results.md). Pruning to odd widths is the commonest way a pruned model ends up no
faster. The twelve constants
(:class:`CostConstants`) start from priors derived from the device's hardware numbers and are fitted by
non-linear least squares on log latency, with a weak pull towards the priors so that a device with only a few
reference figures still gets a sensible model.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from edgemvp.errors import UsageError

if TYPE_CHECKING:
    import onnx

    from edgemvp.deploy.devices import Hardware

logger = logging.getLogger(__name__)

COST_MODEL_VERSION = 4  # bump when op_table or the cost formula changes: cached tables, fits and stored constants
VERSION_KEY = "cost_model_version"  # stored beside a profile's fitted constants
OP_CLASSES = ("conv", "conv_unaligned", "matmul", "other")
SMOOTH_P = 2.0  # exponent of the smooth maximum of compute and memory time
_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}  # onnx elem_type -> bytes
_WEIGHT_OPS = {"Conv": "conv", "ConvInteger": "conv", "QLinearConv": "conv", "MatMul": "matmul", "Gemm": "matmul",
               "MatMulInteger": "matmul", "QLinearMatMul": "matmul"}


@dataclass(frozen=True)
class CostConstants:
    """Per-device cost-model constants (rates in GFLOP/s and GB/s, overheads in µs and ms, cache in MiB)."""

    gflops_conv: float
    gflops_conv_unaligned: float
    gflops_matmul: float
    gflops_other: float
    gbs_act: float
    gbs_cache: float
    gbs_dram: float
    gbs_pack: float
    gbs_im2col: float
    op_overhead_us: float
    run_overhead_ms: float
    cache_mb: float  # the cache the weights can stay in (fitted: on a shared machine, below the nominal size)

    def to_dict(self) -> dict[str, float]:
        """JSON/YAML-ready form."""
        return {k: float(f"{v:.6g}") for k, v in asdict(self).items()}

    def to_record(self) -> dict[str, float]:
        """:meth:`to_dict` stamped with the cost-model version the constants were fitted for (what profiles store)."""
        return {**self.to_dict(), VERSION_KEY: COST_MODEL_VERSION}

    @classmethod
    def from_dict(cls, data: dict[str, float], versioned: bool = False) -> "CostConstants":
        """Inverse of :meth:`to_dict` (every field required); with ``versioned``, of :meth:`to_record`.

        Raises:
            UsageError: A field is missing, or (``versioned``) the constants were fitted for another cost model:
                the same numbers mean something else under another formula.
        """
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise UsageError(f"cost-model constants lack {', '.join(missing)} (written by an older edgemvp? re-run "
                             f"'edgemvp devices calibrate' or remove the constants to refit from the references)")
        if versioned and data.get(VERSION_KEY) != COST_MODEL_VERSION:
            found = f"version {data[VERSION_KEY]:g}" if VERSION_KEY in data else "an unversioned cost model"
            raise UsageError(f"cost-model constants were fitted for {found}, this edgemvp uses version "
                             f"{COST_MODEL_VERSION} (re-run 'edgemvp devices calibrate' or remove the constants to "
                             f"refit from the references)")
        return cls(**{f.name: float(data[f.name]) for f in fields(cls)})

    def vector(self) -> np.ndarray:
        """The constants in SI units (FLOP/s, B/s, s, s, B) in field order."""
        scale = _SCALE
        return np.array([getattr(self, f.name) for f in fields(self)]) * scale

    @classmethod
    def from_vector(cls, v: np.ndarray) -> "CostConstants":
        """Inverse of :meth:`vector`."""
        return cls(*(float(x) for x in np.asarray(v) / _SCALE))


_SCALE = np.array([1e9] * 4 + [1e9] * 5 + [1e-6, 1e-3, 2.0 ** 20])


def prior_constants(hw: "Hardware") -> CostConstants:
    """Priors from the hardware numbers: typical efficiencies of onnxruntime kernels (fitted values replace them)."""
    peak, bw = hw.peak_gflops, hw.mem_bandwidth_gbs
    overhead = 10.0 if hw.accelerator else 1.0  # µs per node: kernel launches cost more than CPU dispatch
    return CostConstants(0.5 * peak, 0.25 * peak, 0.5 * peak, 0.02 * peak, 2 * bw, 8 * bw, 0.5 * bw, bw, bw, overhead,
                         0.05, hw.cache_mb)


@dataclass(frozen=True)
class OpTable:
    """Per-node features of one graph at batch 1 (arrays of equal length, one entry per node).

    Attributes:
        op: ONNX op type per node.
        base: ``conv``, ``matmul`` or ``other``.
        cin: Input channels per group of a convolution's weight (0 otherwise).
        cout: Output channels of a convolution (0 otherwise).
        flops: Floating-point operations (2 per multiply-accumulate; output elements for other nodes).
        act_bytes: Bytes of the node's activation inputs and outputs.
        weight_bytes: Bytes of the node's constant inputs.
        tap_share: Per convolution, the share of (output pixel, kernel tap) pairs that land inside the input rather
            than in its zero padding (1 for other nodes).
        weight_share: Per convolution, the share of kernel taps that any output pixel uses (1 for other nodes).
    """

    op: tuple[str, ...]
    base: tuple[str, ...]
    cin: np.ndarray
    cout: np.ndarray
    flops: np.ndarray
    act_bytes: np.ndarray
    weight_bytes: np.ndarray
    tap_share: np.ndarray | None = None
    weight_share: np.ndarray | None = None

    def effective(self) -> tuple[np.ndarray, np.ndarray]:
        """FLOPs and weight bytes a runtime touches when it skips kernel taps that fall in the padding.

        onnxruntime's CPU convolutions do: a 3x3 convolution over a 1x1 map costs what a 1x1 convolution costs and
        never reads the other eight taps' weights (``bench/conv_taps.py``: eight 512-channel layers over 1x1 maps,
        75 MB of weights, run in 0.12 ms; over 2x2 maps, 2.9 ms). At small inputs (32 px: ResNet stage 4 sees 1x1
        maps) this is most of the weights.
        """
        ones = np.ones(len(self.op))
        tap = ones if self.tap_share is None else self.tap_share
        weight = ones if self.weight_share is None else self.weight_share
        return self.flops * tap, self.weight_bytes * weight

    def classes(self, channel_block: int) -> np.ndarray:
        """Index into :data:`OP_CLASSES` per node, given the device's SIMD channel block."""
        out = np.array([OP_CLASSES.index(b) for b in self.base], dtype=np.int64)
        misaligned = (self.cout % channel_block != 0) | ((self.cin % channel_block != 0) & (self.cin >= 4))
        out[(out == 0) & misaligned] = 1
        return out

    def im2col_bytes(self) -> np.ndarray:
        """Per node, the fp32 column buffer an im2col convolution fills: output pixels · Cin/groups · kh · kw · 4."""
        return np.where(self.cout > 0, 4.0 * self.flops / (2.0 * np.maximum(self.cout, 1.0)), 0.0)

    def totals(self) -> dict[str, float]:
        """Whole-graph sums (for reports)."""
        return {"nodes": len(self.op), "gflops": float(self.flops.sum()) / 1e9,
                "weight_mb": float(self.weight_bytes.sum()) / 2 ** 20, "act_mb": float(self.act_bytes.sum()) / 2 ** 20}

    def to_json(self) -> str:
        """Serialise (no pickle)."""
        data = {"op": list(self.op), "base": list(self.base)}
        data.update({k: getattr(self, k).tolist() for k in _ARRAYS if getattr(self, k) is not None})
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "OpTable":
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in _ARRAYS if k in d}
        return cls(tuple(d["op"]), tuple(d["base"]), **arrays)


_ARRAYS = ("cin", "cout", "flops", "act_bytes", "weight_bytes", "tap_share", "weight_share")


def _static_batch(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Fix every symbolic input/output dimension to 1 (batch 1), so that shapes fold to constants."""
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param or not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = 1
    return model


def _basic_optimized(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """The graph onnxruntime executes before hardware-specific rewrites (ORT_ENABLE_BASIC)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save(model, src)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = dst
        try:
            ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NotImplemented: a model it cannot run
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
            raise UsageError(f"onnxruntime cannot load the model ({first})") from exc
        return onnx.load(dst)


def op_table(path: str | os.PathLike[str]) -> OpTable:
    """Walk an ONNX graph (batch 1, basic-optimised, shapes inferred) into per-node FLOPs and bytes."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(_basic_optimized(_static_batch(onnx.load(str(path)))), data_prop=True)
    g = model.graph
    shapes: dict[str, tuple[list[int], int]] = {}
    for vi in [*g.value_info, *g.input, *g.output]:
        tt = vi.type.tensor_type
        shapes[vi.name] = ([max(d.dim_value, 1) for d in tt.shape.dim], _BYTES.get(tt.elem_type, 4))
    consts = {t.name for t in g.initializer}
    shapes.update({t.name: (list(t.dims), _BYTES.get(t.data_type, 4)) for t in g.initializer})
    rows = [_node_row(node, shapes, consts) for node in g.node]
    ops, base, *arrays = zip(*rows) if rows else ((),) * 9
    return OpTable(tuple(ops), tuple(base), *(np.asarray(a, dtype=np.float64) for a in arrays))


def _axis_shares(n_in: int, n_out: int, k: int, stride: int, dilation: int, pad: int) -> tuple[float, float]:
    """Along one spatial axis: the share of (output, tap) pairs inside the input, and of taps used by any output."""
    if k <= 1 or n_out <= 0:
        return 1.0, 1.0
    pos = np.arange(n_out)[:, None] * stride - pad + np.arange(k)[None, :] * dilation  # input index per (output, tap)
    inside = (pos >= 0) & (pos < n_in)
    return float(inside.mean()), float(inside.any(axis=0).mean())


def _tap_shares(node: "onnx.NodeProto", x_shape: list[int], y_shape: list[int], kernel: list[int]) -> tuple[float, float]:
    """In-bounds tap share and used-tap share of a convolution (1, 1 when shapes are unknown)."""
    nd = len(kernel)
    if nd == 0 or len(x_shape) != nd + 2 or len(y_shape) != nd + 2:
        return 1.0, 1.0
    attrs = {a.name: a for a in node.attribute}
    strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * nd
    dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * nd
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * nd)
    auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    tap, weight = 1.0, 1.0
    for i in range(nd):
        n_in, n_out, k, s, d = x_shape[2 + i], y_shape[2 + i], kernel[i], strides[i], dilations[i]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, (n_out - 1) * s + (k - 1) * d + 1 - n_in)
            pad = total // 2 if auto_pad == "SAME_UPPER" else (total + 1) // 2
        else:
            pad = pads[i] if auto_pad == "NOTSET" and len(pads) == 2 * nd else 0
        a, b = _axis_shares(n_in, n_out, k, s, d, pad)
        tap, weight = tap * a, weight * b
    return tap, weight


def _node_row(node: "onnx.NodeProto", shapes: dict[str, tuple[list[int], int]], consts: set[str]) -> tuple:
    def nbytes(name: str) -> int:
        dims, size = shapes.get(name, ([0], 4))
        return int(np.prod(dims)) * size

    act = sum(nbytes(n) for n in [*node.input, *node.output] if n and n not in consts)
    weight = sum(nbytes(n) for n in node.input if n in consts)
    out_elems = int(np.prod(shapes.get(node.output[0], ([0], 4))[0])) if node.output else 0
    base, cin, cout, flops = _WEIGHT_OPS.get(node.op_type, "other"), 0, 0, out_elems
    tap, used = 1.0, 1.0
    w_index = 3 if node.op_type == "QLinearConv" else 1
    if base == "conv" and len(node.input) > w_index and node.input[w_index] in shapes:
        w = shapes[node.input[w_index]][0]  # (Cout, Cin/groups, kh, kw)
        cout, cin = w[0], w[1] if len(w) > 1 else 1
        flops = 2 * out_elems * int(np.prod(w[1:]))
        if node.input[0] in shapes and node.output and node.output[0] in shapes:
            tap, used = _tap_shares(node, shapes[node.input[0]][0], shapes[node.output[0]][0], list(w[2:]))
    elif base == "matmul" and node.input and node.input[0] in shapes:
        a = shapes[node.input[0]][0]
        k = a[0] if node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute) else a[-1]
        flops = 2 * out_elems * k
    return node.op_type, base, cin, cout, flops, act, weight, tap, used


def _predict(v: np.ndarray, table: OpTable, channel_block: int) -> float:
    """Latency in seconds for constants ``v`` (SI units, :meth:`CostConstants.vector` order)."""
    rates, b_act, b_cache, b_dram, b_pack, b_col, overhead, run, cache = v[:4], *v[4:]
    cls = table.classes(channel_block)
    flops, weight = table.effective()
    spill = max(0.0, 1.0 - cache / max(float(weight.sum()), 1.0))
    compute = flops / rates[cls]
    memory = table.act_bytes / b_act + (cls == 1) * table.im2col_bytes() / b_col
    node = (compute ** SMOOTH_P + memory ** SMOOTH_P) ** (1.0 / SMOOTH_P) + overhead
    node = node + weight * (1.0 / b_cache + spill / b_dram) + (cls == 1) * table.weight_bytes / b_pack
    return float(node.sum() + run)


def estimate_ms(table: OpTable, constants: CostConstants, channel_block: int) -> float:
    """Estimated batch-1 latency of a graph in milliseconds.

    Args:
        table: The graph's per-node features (:func:`op_table`).
        constants: The device's constants.
        channel_block: The device's SIMD channel block (convolutions off it are costed as misaligned).
    """
    return 1e3 * _predict(constants.vector(), table, channel_block)


@dataclass(frozen=True)
class FitResult:
    """Fitted constants and how well they reproduce the references they were fitted to."""

    constants: CostConstants
    rel_errors: tuple[float, ...]

    def within(self, tol: float = 0.2) -> float:
        """Share of references estimated within ``tol`` (relative)."""
        return float(np.mean(np.abs(self.rel_errors) <= tol)) if self.rel_errors else 0.0


def fit_constants(tables: list[OpTable], latencies_ms: list[float], prior: CostConstants, channel_block: int,
                  prior_weight: float = 0.05) -> FitResult:
    """Fit a device's constants to reference latencies (least squares on log latency, pulled to the prior).

    Args:
        tables: Reference graphs.
        latencies_ms: Their latency on the device.
        prior: Starting point and regulariser (see :func:`prior_constants`).
        channel_block: The device's SIMD channel block.
        prior_weight: Weight of each constant's log-distance to its prior, relative to one reference.

    Returns:
        The fitted constants and the relative error on every reference.
    """
    from scipy.optimize import least_squares

    if len(tables) != len(latencies_ms) or not tables:
        raise ValueError("need one latency per reference table, and at least one")
    target = np.log(np.asarray(latencies_ms, dtype=np.float64) / 1e3)
    theta0 = np.log(prior.vector())

    def residuals(theta: np.ndarray) -> np.ndarray:
        v = np.exp(theta)
        pred = np.log([_predict(v, t, channel_block) for t in tables])
        return np.concatenate([pred - target, prior_weight * (theta - theta0)])

    sol = least_squares(residuals, theta0, method="trf", x_scale=1.0, max_nfev=2000)
    fitted = CostConstants.from_vector(np.exp(sol.x))
    est = np.array([estimate_ms(t, fitted, channel_block) for t in tables])
    errors = tuple(float(e) for e in est / np.asarray(latencies_ms) - 1.0)
    logger.info("cost model fitted to %d references: %.0f%% within 20%%", len(tables),
                100 * np.mean(np.abs(errors) <= 0.2))
    return FitResult(fitted, errors)
