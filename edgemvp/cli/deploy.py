"""CLI commands for deployment: ``export``, ``check`` and ``devices`` (thin adapters over the library).

Registered on the main group by the last line of :mod:`edgemvp.cli`.
"""
from __future__ import annotations

from pathlib import Path

import click

from edgemvp.cli.types import Number
from edgemvp.cli import Context, cli, pass_ctx

profiles_option = click.option(
    "--profiles", "profiles", multiple=True, type=click.Path(exists=True, path_type=Path),
    help="Extra device profile file or folder (repeatable) [env EDGEMVP_PROFILES].")


def _registry(ctx: Context, profiles: tuple[Path, ...]):
    from edgemvp.deploy.devices import ProfileRegistry

    return ProfileRegistry(profiles, ctx.cache)


@cli.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--device", "-d", required=True, help="Target device profile or alias (see 'edgemvp devices list').")
@click.option("--int8", is_flag=True, help="Also write an int8 model (static QDQ for CNNs, dynamic for ViTs).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder [default: SOURCE's].")
@click.option("--task", help="Named task whose data calibrates int8 and measures accuracy (or --dataset/--classes).")
@click.option("--dataset", help="Dataset of an ad-hoc task.")
@click.option("--classes", help="Comma-separated classes of an ad-hoc task.")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True)
@click.option("--runs", type=Number(5, 100_000, integer=True), default=100, show_default=True, help="Timed runs when measuring.")
@profiles_option
@pass_ctx
def export_cmd(ctx: Context, source: Path, device: str, int8: bool, out: Path | None, task: str | None,
               dataset: str | None, classes: str | None, exporter: str, runs: int, profiles: tuple[Path, ...]) -> None:
    """Export RUN_DIR | WEIGHTS | BASE_DIR to ONNX (parity-checked), optionally int8, with a latency report."""
    from edgemvp.data.tasks import resolve_task
    from edgemvp.deploy.export import REPORT, deploy, load_source
    from edgemvp.deploy.onnx import ExportConfig
    from edgemvp.runs import check_export_out

    profile = _registry(ctx, profiles).get(device)
    src = load_source(source)
    spec = resolve_task(task, dataset, classes, ctx.data) if (task or dataset or classes) else src.task
    out_dir = check_export_out(out or src.folder, src.folder)  # never over a user's own model.onnx
    report = deploy(src, profile, out_dir, int8, spec, ExportConfig(exporter=exporter), ctx.cache, ctx.data, runs)
    exp = report["export"]
    click.echo(f"{exp['path']}: {exp['exporter']} opset {exp['opset']}, {exp['file_bytes'] / 2**20:.2f} MB, parity "
               f"max abs diff {exp['parity']['max_abs_diff']:.2g}, top-1 {100 * exp['parity']['top1_agreement']:.1f}%")
    for precision, lat in report["latency"].items():
        acc = report.get("accuracy", {}).get(precision)
        click.echo(f"  {precision:5s} {lat['value_ms']:.3f} ms {lat['statistic']} ({lat['source']})"
                   + (f", accuracy {acc:.2f}%" if acc is not None else ""))
    if "top1_agreement" in report.get("accuracy", {}):
        click.echo(f"  int8 top-1 agreement with fp32: {report['accuracy']['top1_agreement']:.2f}%")
    click.echo(f"report: {out_dir / REPORT}")


@cli.command("check")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--device", "-d", required=True, help="Device profile or alias (see 'edgemvp devices list').")
@click.option("--budget-ms", type=Number(0, 1e7, lo_open=True), help="Override the profile's latency budget.")
@click.option("--measure", is_flag=True, help="Measure here with the profile's providers (you are on the device).")
@click.option("--runs", type=Number(5, 100_000, integer=True), default=100, show_default=True, help="Timed runs when measuring.")
@profiles_option
@pass_ctx
def check_cmd(ctx: Context, model: Path, device: str, budget_ms: float | None, measure: bool, runs: int,
              profiles: tuple[Path, ...]) -> None:
    """Check MODEL.onnx against a device's latency budget (exit 3 when over)."""
    from edgemvp.deploy.latency import check_model

    verdict = check_model(model, _registry(ctx, profiles).get(device), budget_ms, measure, ctx.cache, runs)
    click.echo(verdict)


@cli.group()
def devices() -> None:
    """Device profiles: list, show, calibrate."""


@devices.command("list")
@profiles_option
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
@profiles_option
@pass_ctx
def devices_show(ctx: Context, device: str, profiles: tuple[Path, ...]) -> None:
    """Show a device profile as loaded (validated, 'auto' fields resolved)."""
    import yaml

    from edgemvp.deploy.devices import profile_summary

    click.echo(yaml.safe_dump(profile_summary(_registry(ctx, profiles).get(device)), sort_keys=False).rstrip())


@devices.command("calibrate")
@click.argument("device", default="host")
@click.option("--runs", type=Number(5, 100_000, integer=True), default=50, show_default=True)
@click.option("--force", is_flag=True, help="Measure even if this machine is not detected as the device.")
@profiles_option
@pass_ctx
def devices_calibrate(ctx: Context, device: str, runs: int, force: bool, profiles: tuple[Path, ...]) -> None:
    """Measure the profile's calibration suite here and fit its cost model (writes <cache>/profiles/D.yaml)."""
    from edgemvp.deploy.latency import calibrate

    path, fit = calibrate(_registry(ctx, profiles).get(device), ctx.cache, runs, force)
    click.echo(f"{path}: {len(fit.rel_errors)} models, {100 * fit.within(0.2):.0f}% fitted within 20%")
