"""Retrain commands, mounted at the top level of ``sift``: ``retrain``, ``rollback``, ``models list|report``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Retrain, roll back and inspect model versions.", no_args_is_help=True)
models = typer.Typer(help="Inspect a classifier's registered model versions.", no_args_is_help=True)
app.add_typer(models, name="models")

EXIT = {"promoted": 0, "not_promoted": 0, "data_rejected": 1, "failed": 1, "busy": 3}


def _print(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _require(name: str) -> None:
    from infra.objectstore import ObjectStore
    from infra.settings import get_settings
    from infra.tenants import TenantStore

    if TenantStore(ObjectStore(get_settings())).get(name) is None:
        _fail(f"unknown classifier {name!r}")


@app.command()
def retrain(
    name: str,
    time_budget: float | None = typer.Option(None, help="seconds for all candidates (default: the policy's)"),
) -> None:
    """Run a retrain job now, in the foreground: assemble, validate, train, bless, promote."""
    import logging

    from infra.settings import get_settings
    from retrain.job import JobOptions, run_retrain_job

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _require(name)
    record = run_retrain_job(get_settings(), name, JobOptions(trigger="cli", time_budget_s=time_budget))
    _print({
        "job_id": record.job_id, "status": record.status, "reason": record.reason,
        "champion_before": record.champion_before, "champion_after": record.champion_after,
        "candidates": [c.model_dump() for c in record.candidates],
        "dataset": record.dataset.model_dump(mode="json") if record.dataset else None,
        "phases": {p.name: p.seconds for p in record.phases},
    })
    raise typer.Exit(EXIT[record.status])


@app.command()
def rollback(name: str) -> None:
    """Make the previous champion serve again (every replica swaps to it)."""
    from infra.objectstore import ObjectStore
    from infra.registry import Registry
    from infra.settings import get_settings
    from retrain.promote import RollbackError, bus_publish
    from retrain.promote import rollback as do_rollback

    settings = get_settings()
    _require(name)
    try:
        event = do_rollback(Registry(settings), ObjectStore(settings), bus_publish(settings), name)
    except RollbackError as exc:
        _fail(str(exc))
    typer.echo(f"{name}: champion is now v{event.version}")


@models.command("list")
def models_list(name: str) -> None:
    """Versions with aliases, macro-F1, blessing verdict and lineage ids."""
    from infra.registry import Registry
    from infra.settings import get_settings
    from retrain.models import list_models

    _print([m.model_dump(mode="json") for m in list_models(Registry(get_settings()), name)])


@models.command("report")
def models_report(
    name: str,
    version: str,
    out: Path = typer.Option(Path("model-reports"), help="where the report PNGs are downloaded"),
) -> None:
    """Metrics, verdict, lineage and the confusion-matrix / learning-curve PNGs of one version."""
    from mlflow.exceptions import MlflowException

    from infra.settings import get_settings
    from retrain.models import model_report

    try:
        rep = model_report(get_settings(), name, version, out_dir=out)
    except MlflowException as exc:
        _fail(f"no version {version} of classifier {name!r}: {exc.message}")
    s = rep.summary
    typer.echo(f"{name} v{s.version}  aliases: {', '.join(s.aliases) or '-'}  candidate: {s.candidate or '-'}")
    keys = ("accuracy", "macro_f1", "bless.accuracy", "bless.macro_f1", "bless.champion_macro_f1", "temperature",
            "ece_before", "ece_after", "train_seconds")
    for k in keys:
        if k in rep.metrics:
            typer.echo(f"  {k:<26}{rep.metrics[k]:.4f}")
    if rep.verdict:
        typer.echo(f"  blessed: {rep.verdict.blessed}  ({rep.verdict.reason})")
    typer.echo("lineage:")
    typer.echo(f"  run:             {rep.run_url}")
    typer.echo(f"  parent version:  {s.parent_version or '-'}   job: {s.job_id or '-'}")
    typer.echo(f"  train fingerprint: {rep.tags.get('dataset_fingerprint', '-')}")
    if rep.dataset:
        d = rep.dataset
        typer.echo(f"  dataset version: {d.version_id} (seed {d.seed_rows}, reviewed {d.reviewed_labels})")
        typer.echo(f"  train counts:    {d.train_counts}")
        typer.echo(f"  eval counts:     {d.eval_counts}")
    typer.echo("report files:")
    for p in rep.pngs:
        typer.echo(f"  {p}")
