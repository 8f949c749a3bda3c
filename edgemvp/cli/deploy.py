"""``edgemvp export``, ``check`` and ``devices``: deployment (thin commands over :mod:`edgemvp.deploy`)."""
from __future__ import annotations

from pathlib import Path
from typing import get_args

import click
import yaml

from edgemvp.cli.common import DEVICE_OPTION, PROFILES_OPTION, RUNS_OPTION, Context, defaults, pass_ctx
from edgemvp.cli.types import Number
from edgemvp.data.tasks import resolve_task
from edgemvp.deploy.budget import check_model
from edgemvp.deploy.calibrate import calibrate
from edgemvp.deploy.devices import ProfileRegistry, profile_summary
from edgemvp.deploy.export import REPORT, deploy, load_source
from edgemvp.deploy.onnx import ExportConfig, Exporter
from edgemvp.runs import check_export_out


def _registry(ctx: Context, profiles: tuple[Path, ...]) -> ProfileRegistry:
    return ProfileRegistry(profiles, ctx.cache)


@click.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@DEVICE_OPTION
@click.option("--int8", is_flag=True, help="Also write an int8 model (static QDQ for CNNs, dynamic for ViTs).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder [default: SOURCE's].")
@click.option("--task", help="Named task whose data calibrates int8 and measures accuracy (or --dataset/--classes).")
@click.option("--dataset", help="Dataset of an ad-hoc task.")
@click.option("--classes", help="Comma-separated classes of an ad-hoc task.")
@click.option("--exporter", type=click.Choice(get_args(Exporter)), default=defaults(ExportConfig)["exporter"],
              show_default=True)
@RUNS_OPTION
@PROFILES_OPTION
@pass_ctx
def export_cmd(ctx: Context, source: Path, device: str, int8: bool, out: Path | None, task: str | None,
               dataset: str | None, classes: str | None, exporter: str, runs: int, profiles: tuple[Path, ...]) -> None:
    """Export RUN_DIR | WEIGHTS | BASE_DIR to ONNX (parity-checked), optionally int8, with a latency report."""
    profile = _registry(ctx, profiles).get(device)
    src = load_source(source)
    spec = resolve_task(task, dataset, classes, ctx.data) if (task or dataset or classes) else src.task
    out_dir = check_export_out(out or src.folder, src.folder)  # never over a user's own model.onnx
    report = deploy(src, profile, out_dir, int8, spec, ExportConfig(exporter=exporter), ctx.cache, ctx.data, runs)
    for line in report.summary_lines():
        click.echo(line)
    click.echo(f"report: {out_dir / REPORT}")


@click.command("check")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--device", "-d", required=True, help="Device profile or alias (see 'edgemvp devices list').")
@click.option("--budget-ms", type=Number(0, 1e7, lo_open=True), help="Override the profile's latency budget.")
@click.option("--measure", is_flag=True, help="Measure here with the profile's providers (you are on the device).")
@RUNS_OPTION
@PROFILES_OPTION
@pass_ctx
def check_cmd(ctx: Context, model: Path, device: str, budget_ms: float | None, measure: bool, runs: int,
              profiles: tuple[Path, ...]) -> None:
    """Check MODEL.onnx against a device's latency budget (exit 3 when over)."""
    verdict = check_model(model, _registry(ctx, profiles).get(device), budget_ms, measure, ctx.cache, runs)
    click.echo(verdict)


@click.group()
def devices() -> None:
    """Device profiles: list, show, calibrate."""


@devices.command("list")
@PROFILES_OPTION
@pass_ctx
def devices_list(ctx: Context, profiles: tuple[Path, ...]) -> None:
    """List device profiles with aliases, budget and whether this machine is the device."""
    reg = _registry(ctx, profiles)
    for name in reg.names():
        p = reg.get(name)
        here = " (this machine)" if p.is_current() else ""
        aliases = ",".join(p.aliases) or "-"
        click.echo(f"{p.name:17s} {aliases:28s} {p.budget.latency_ms:g} ms {p.budget.statistic}  {p.description}{here}")


@devices.command("show")
@click.argument("device")
@PROFILES_OPTION
@pass_ctx
def devices_show(ctx: Context, device: str, profiles: tuple[Path, ...]) -> None:
    """Show a device profile as loaded (validated, 'auto' fields resolved)."""
    click.echo(yaml.safe_dump(profile_summary(_registry(ctx, profiles).get(device)), sort_keys=False).rstrip())


@devices.command("calibrate")
@click.argument("device", default="host")
@click.option("--runs", type=Number(5, 100_000, integer=True), default=50, show_default=True)
@click.option("--force", is_flag=True, help="Measure even if this machine is not detected as the device.")
@PROFILES_OPTION
@pass_ctx
def devices_calibrate(ctx: Context, device: str, runs: int, force: bool, profiles: tuple[Path, ...]) -> None:
    """Measure the profile's calibration suite here and fit its cost model (writes <cache>/profiles/D.yaml)."""
    path, fit = calibrate(_registry(ctx, profiles).get(device), ctx.cache, runs, force)
    click.echo(f"{path}: {len(fit.rel_errors)} models, {100 * fit.within(0.2):.0f}% fitted within 20%")
