"""What ``edgemvp prune`` reports: :class:`PruneReport`, written as ``report.json``, as the folder's model card
(``README.md``) and as the summary the command prints.

The report is built stage by stage (:mod:`edgemvp.pipeline`): the request and the base first, then the
ranking and the fitted model, then the export and the latency verdict, then the timings. :meth:`to_dict` is
the ``report.json`` schema (:data:`REPORT_SCHEMA`), key for key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemvp.data.tasks import TaskSpec
from edgemvp.runs import RUN_FORMAT
from edgemvp.spec import InputSpec

REPORT_SCHEMA = 1


@dataclass(frozen=True)
class BaseSummary:
    """The base model the run pruned, with its size (the reference for the ratios)."""

    arch: str
    dataset: str
    weights_sha256: str
    test_acc: float | None  # None: a stock pre-trained checkpoint
    params: int
    macs: int
    input_spec: InputSpec

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "dataset": self.dataset, "weights_sha256": self.weights_sha256,
                "test_acc": self.test_acc, "params": self.params, "macs": self.macs,
                "input_spec": self.input_spec.to_dict()}


@dataclass(frozen=True)
class Accuracy:
    """Test accuracy (%) at init, before and after BatchNorm re-estimation (None for ``ifp``), and at the end."""

    init_before_bn: float | None
    init: float | None
    final: float

    def to_dict(self) -> dict[str, float | None]:
        return {"init": self.init, "init_before_bn": self.init_before_bn, "final": self.final}


@dataclass
class PruneReport:
    """One run's report.

    Attributes:
        task: The target task.
        device: The device profile's name.
        method: ``mvp``, ``random``, ``ifp`` or ``transfer``.
        base: The base model.
        zoo: ``path`` and ``entries`` of the zoo voted from (``added``: the entry the run was stored as).
        similarity: ``kind``, ``note`` and ``requested`` of the ranking (None for methods without one).
        neighbours: The neighbours used, with their similarity (:meth:`edgemvp.mvp.voter.Neighbour.summary`).
        method_info: What the method adds (``vote``, ``pruner``, ``bn_reestimated``).
        settings: The request's settings (iters, ratio, seed, ...).
        accuracy: Test accuracy.
        params, macs: Of the pruned model; ``keep_ratio`` the share of units kept.
        export: Opset, parity, exporter and accuracy of the ONNX model.
        latency: The shipped model's latency, its budget and the verdict.
        files: sha256 of every file in the run folder.
        versions: Tool versions.
        timings: Seconds per stage.
        search: How a latency budget chose the ratio (:class:`edgemvp.deploy.search.SearchResult`), if it did.
    """

    task: TaskSpec
    device: str
    method: str
    base: BaseSummary
    zoo: dict[str, Any]
    similarity: dict[str, Any] | None
    neighbours: list[dict[str, Any]]
    method_info: dict[str, Any]
    settings: dict[str, Any]
    accuracy: Accuracy
    params: int
    macs: int
    keep_ratio: float
    export: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    search: dict[str, Any] | None = None

    @property
    def params_ratio(self) -> float:
        return round(self.params / self.base.params, 5)

    @property
    def macs_ratio(self) -> float:
        return round(self.macs / self.base.macs, 5)

    @property
    def within_budget(self) -> bool:
        return bool(self.latency["within_budget"])

    def to_dict(self) -> dict[str, Any]:
        """``report.json`` (:data:`REPORT_SCHEMA`)."""
        out: dict[str, Any] = {
            "format": RUN_FORMAT, "schema_version": REPORT_SCHEMA, "task": self.task.name,
            "dataset": self.task.dataset, "classes": list(self.task.classes), "device": self.device,
            "method": self.method, "base": self.base.to_dict(), "zoo": dict(self.zoo), "similarity": self.similarity,
            "neighbours": self.neighbours, **self.method_info, "settings": self.settings,
            "accuracy": self.accuracy.to_dict(), "params": self.params, "macs": self.macs,
            "params_ratio": self.params_ratio, "macs_ratio": self.macs_ratio, "keep_ratio": self.keep_ratio,
        }
        for key in ("search", "export", "latency", "files", "versions", "timings"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out

    def summary_lines(self, out: Path) -> list[str]:
        """The short summary ``edgemvp prune`` prints."""
        return summary(self.to_dict(), out)

    def model_card(self) -> str:
        """The run folder's ``README.md``."""
        return model_card(self.to_dict())


def _aligned(settings: dict) -> str:
    """``, channels in multiples of 8`` when the counts were aligned to a device's block."""
    block = settings.get("round_to", 1)
    return f", channels in multiples of {block}" if block and block > 1 else ""


def summary(r: dict, out: Path) -> list[str]:
    """The short summary printed after a run, from ``report.json``'s content."""
    acc, lat, t = r["accuracy"], r["latency"], r["timings"]
    lines = [f"{r['task']} ({r['dataset']}: {', '.join(r['classes'])}) -> {r['device']}, method {r['method']}"]
    if r.get("neighbours"):
        lines.append(f"neighbours by {r['similarity']['kind']}:")
        lines += [f"  {n['id'][:12]} {', '.join(n['classes'])}  similarity {n['similarity']:.3f}"
                  for n in r["neighbours"]]
    init = "" if acc["init"] is None else (f" (at init {acc['init']:.2f}%"
                                           + (f", before BN re-estimation {acc['init_before_bn']:.2f}%"
                                              if r.get("bn_reestimated") else "") + ")")
    lines.append(f"accuracy {acc['final']:.2f}% after {r['settings']['iters']} steps{init}")
    lines.append(f"size {r['params'] / 1e6:.3f} M params ({100 * r['params_ratio']:.1f}% of "
                 f"{r['base']['params'] / 1e6:.2f} M), {r['macs'] / 1e6:.2f} M MACs ({100 * r['macs_ratio']:.1f}% of "
                 f"{r['base']['macs'] / 1e6:.1f} M)" + _aligned(r['settings']))
    if r.get("search"):
        lines.append(search_line(r["search"]))
    verdict = "within budget" if lat["within_budget"] else "OVER BUDGET"
    lines.append(f"latency {lat['value_ms']:.3f} ms {lat['statistic']} ({lat['source']}, {lat['model']}) vs budget "
                 f"{lat['budget_ms']:g} ms {lat['budget_statistic']}: {verdict}"
                 + (f" (measured again: the first figure, {lat['first_measurement_ms']:.3f} ms, was over)"
                    if lat.get("first_measurement_ms") is not None else ""))
    lines.append(f"wrote {out}/ in {t.get('total', 0):.1f} s" + (f"; added to zoo as {r['zoo']['added'][:12]}"
                                                                  if r["zoo"].get("added") else ""))
    return lines


def search_line(search: dict) -> str:
    """``ratio 0.37 chosen by the 33 ms budget in 8 steps (...)``: how the budget sized the model."""
    chosen = next(s for s in reversed(search["steps"]) if s["ratio"] == search["ratio"])
    retried = f", {len(search['retries'])} retried" if search["retries"] else ""
    return (f"ratio {search['ratio']:g} chosen by the {search['budget_ms']:g} ms budget in {len(search['steps'])} "
            f"steps{retried}: candidate {chosen['latency_ms']:.3f} ms {search['statistic']} ({search['source']}) <= "
            f"aim {search['aim_ms']:.3f} ms (margin {100 * search['margin']:g}%), keeps "
            f"{100 * chosen['keep_ratio']:.1f}% of the units" + allocation_line(search.get("allocation")))


def allocation_line(alloc: dict | None) -> str:
    """``; greedy per-group allocation: keeps 38.3% ...`` (empty without an allocation)."""
    if not alloc:
        return ""
    if alloc["fell_back"]:
        return (f"; the greedy allocation did not meet the aim above the uniform counts in {len(alloc['checks'])} "
                f"rounds: uniform counts kept")
    return (f"; greedy per-group allocation from ratio {alloc['start_ratio']:g}: {len(alloc['removals'])} blocks "
            f"removed in {len(alloc['checks'])} rounds, candidate {alloc['latency_ms']:.3f} ms, keeps "
            f"{100 * alloc['keep_ratio']:.1f}% of the units")


def model_card(report: dict) -> str:
    """A short README.md for the output folder, from ``report.json``'s content."""
    lat, acc, base = report["latency"], report["accuracy"], report["base"]
    spec = base["input_spec"]
    lines = [
        f"# {report['task']} on {report['device']}",
        "",
        f"A {base['arch']} pruned for the {len(report['classes'])}-class task **{report['task']}** "
        f"({report['dataset']}: {', '.join(report['classes'])}) with edgemvp `--method {report['method']}`, "
        f"{report['settings']['iters']} fine-tune steps, ratio {report['settings']['ratio']}.",
        "",
        "| | |",
        "|---|---|",
        f"| test accuracy | {acc['final']:.2f}% (at init: {_pct(acc['init'])}) |",
        f"| parameters | {report['params']:,} ({100 * report['params_ratio']:.1f}% of the base's {base['params']:,}) |",
        f"| MACs at {spec['size']} px | {report['macs']:,} ({100 * report['macs_ratio']:.1f}% of the base) |",
        f"| latency ({lat['model']}) | {lat['value_ms']:.3f} ms {lat['statistic']}, {lat['source']} "
        f"(budget {lat['budget_ms']:g} ms {lat['budget_statistic']}: {'within' if lat['within_budget'] else 'OVER'}) |",
        f"| input | {spec['channels']} x {spec['size']} x {spec['size']}, normalised mean {spec['mean']} "
        f"std {spec['std']} |",
        "",
    ]
    if report.get("neighbours"):
        lines += ["Voted from these zoo tasks (similarity " + report["similarity"]["kind"] + "):", ""]
        lines += [f"- `{n['id'][:12]}` {n['task']} ({', '.join(n['classes'])}): {n['similarity']:.3f}"
                  for n in report["neighbours"]]
        lines.append("")
    lines += ["Files: `model.onnx` (opset " + str(report["export"]["opset"]) + ", parity-checked against PyTorch), "
              "`masks.json` + `weights.safetensors` (rebuild: create(arch) -> shrink(masks) -> load), "
              "`report.json` (every figure, timings, versions, seeds).", ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"
