"""``sift``: the operator's command line (local stack, classifiers, training, workers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

app = typer.Typer(help="Sift: active-learning text classification.", no_args_is_help=True)
classifiers = typer.Typer(help="Create and manage classifiers (tenants).", no_args_is_help=True)
worker = typer.Typer(help="Run a pipeline worker in the foreground.", no_args_is_help=True)
app.add_typer(classifiers, name="classifiers")
app.add_typer(worker, name="worker")


def _mount_stage_clis() -> None:
    from demo.cli import demo
    from feedback.cli import app as feedback_cli
    from ops.cli import app as ops_cli
    from ops.cli import register_commands as register_ops_commands
    from retrain.cli import app as retrain_cli
    from review.cli import app as review_cli
    from sift.gc import retention as gc_retention

    app.add_typer(feedback_cli, name="feedback")
    app.add_typer(review_cli, name="review")
    app.add_typer(ops_cli, name="dlq")
    register_ops_commands(app, gc_retention)
    app.add_typer(retrain_cli)  # no name: `sift retrain`, `sift rollback`, `sift models ...` at the top level
    app.command()(demo)


_mount_stage_clis()


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _tenants():  # noqa: ANN202
    import atexit

    from infra.objectstore import ObjectStore
    from infra.settings import get_settings
    from infra.tenant_events import TenantNotifier
    from infra.tenants import TenantStore

    store = ObjectStore(get_settings())
    store.ensure_bucket()
    notifier = TenantNotifier(get_settings())  # running API replicas drop their cached copy at once
    atexit.register(notifier.close)
    return TenantStore(store, on_change=notifier)


def _print(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@classifiers.command("create")
def classifiers_create(
    name: str,
    labels: str = typer.Option(..., help="comma-separated labels, e.g. earn,acq,crude"),
    threshold: float | None = typer.Option(
        None, help="predictions below this confidence go to review (default 0.6; derived with a budget)"),
    review_budget_per_day: int | None = typer.Option(
        None, help="about this many texts a day go to review: the threshold follows recent confidences"),
    base_model: str = typer.Option("", help="Hugging Face id or local path; default: the shipped MiniLM"),
    description: str = typer.Option(""),
) -> None:
    """Onboard a classifier: config, API key, topics and review project."""
    from infra.settings import get_settings
    from infra.tenants import TenantError
    from sift.onboarding import build_config, create_classifier

    try:
        cfg = build_config(
            name=name, labels=[x.strip() for x in labels.split(",") if x.strip()], threshold=threshold,
            review_budget_per_day=review_budget_per_day, base_model=base_model, description=description,
        )
        cfg, key, warnings = create_classifier(get_settings(), _tenants(), cfg)
    except TenantError as exc:
        _fail(str(exc))
    for w in warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    from sift.admin import ClassifierView

    _print({"classifier": ClassifierView.of(cfg).model_dump(mode="json"), "api_key": key})


@classifiers.command("list")
def classifiers_list() -> None:
    from sift.admin import ClassifierView

    _print([ClassifierView.of(c).model_dump(mode="json") for c in _tenants().list()])


@classifiers.command("show")
def classifiers_show(name: str) -> None:
    from infra.tenants import TenantError
    from sift.admin import ClassifierView

    try:
        _print(ClassifierView.of(_tenants().require(name)).model_dump(mode="json"))
    except TenantError as exc:
        _fail(str(exc))


@classifiers.command("update")
def classifiers_update(
    name: str,
    threshold: float | None = typer.Option(None),
    review_budget_per_day: int | None = typer.Option(
        None, help="texts a day to review; hands routing to the budget unless --threshold is given too"),
    no_review_budget: bool = typer.Option(False, "--no-review-budget", help="remove the review budget"),
    description: str | None = typer.Option(None),
    min_new_labels: int | None = typer.Option(None, help="retrain after this many new reviewed labels"),
    schedule: str | None = typer.Option(None, help="retrain schedule: daily, weekly or a cron expression"),
) -> None:
    from pydantic import ValidationError

    from infra.tenants import ClassifierConfig, TenantError
    from sift.errors import validation_message

    tenants = _tenants()
    try:
        cfg = tenants.require(name)
        data = cfg.model_dump()
        if threshold is not None:
            data["threshold"] = threshold
        if review_budget_per_day is not None:
            data["review_budget_per_day"] = review_budget_per_day
            if threshold is None:
                data["threshold"] = None
        if no_review_budget:
            data["review_budget_per_day"] = None
        if description is not None:
            data["description"] = description
        if min_new_labels is not None:
            data["retrain"]["min_new_labels"] = min_new_labels
        if schedule is not None:
            data["retrain"]["schedule"] = schedule
        try:
            cfg = tenants.save(ClassifierConfig.model_validate(data))
        except ValidationError as exc:
            raise TenantError(validation_message(exc)) from exc
    except TenantError as exc:
        _fail(str(exc))
    typer.echo(f"updated {name}")


@classifiers.command("delete")
def classifiers_delete(name: str, yes: bool = typer.Option(False, "--yes", help="do not ask")) -> None:
    from infra.tenants import TenantError

    if not yes:
        typer.confirm(f"delete classifier {name} and revoke its keys?", abort=True)
    try:
        _tenants().delete(name)
    except TenantError as exc:
        _fail(str(exc))
    typer.echo(f"deleted {name}")


@classifiers.command("new-key")
def classifiers_new_key(name: str) -> None:
    from infra.tenants import TenantError

    try:
        typer.echo(_tenants().issue_key(name))
    except TenantError as exc:
        _fail(str(exc))


@app.command()
def train(
    name: str,
    data: Path = typer.Option(..., exists=True, help="CSV/JSONL with text,label or a datasets folder"),
    epochs: int | None = typer.Option(None),
    max_length: int | None = typer.Option(None),
    layers: int | None = typer.Option(None, help="keep only the first N encoder layers (fast, smaller)"),
    limit: int | None = typer.Option(None, help="use at most this many rows (stratified)"),
    champion: bool = typer.Option(True, help="make it champion when there is none yet"),
) -> None:
    """Fine-tune the classifier's base encoder on labeled data and register a new version."""
    from infra.registry import RegistryError
    from sift.training import train_command

    try:
        result = train_command(name, data, epochs=epochs, max_length=max_length, layers=layers, limit=limit,
                               make_champion_if_none=champion)
    except (ValueError, RegistryError) as exc:  # a registry error is never read as "no champion yet"
        _fail(str(exc))
    _print(result)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(18000),
    workers: int = typer.Option(1),
) -> None:
    """Run the API (classify, feedback, review webhook, admin)."""
    import uvicorn

    uvicorn.run("sift.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="info", access_log=False)


@app.command()
def up(
    label_studio: bool = typer.Option(True, help="also run Label Studio (the review UI)"),
    demo: bool = typer.Option(True, help="onboard the demo classifier and train its first model"),
    train_rows: int = typer.Option(800, help="texts for the demo's first model"),
    detach: bool = typer.Option(False, help="return once everything is up"),
    api_replicas: int = typer.Option(1, min=1, max=16, help="API replicas behind HAProxy (more than 1: cluster)"),
    workers: int = typer.Option(1, min=1, max=8, help="workers of each kind (more than 1: cluster)"),
    brokers: int = typer.Option(1, min=1, max=8, help="Tansu brokers on one store, behind HAProxy"),
) -> None:
    """Start the local stack (S3, Kafka, MLflow, Label Studio), the API and the workers.

    With more than one of anything it runs the production shape on this machine: PostgreSQL under
    MLflow and Label Studio, HAProxy in front of the API replicas and the brokers.
    """
    from infra.local.stack import Topology
    from infra.settings import get_settings
    from sift.local_up import up as run_up

    run_up(get_settings(), with_label_studio=label_studio, demo=demo, train_rows=train_rows, detach=detach,
           topology=Topology(api_replicas=api_replicas, workers=workers, brokers=brokers))


@app.command()
def down() -> None:
    """Stop everything `sift up` started."""
    from infra.local.stack import LocalStack

    LocalStack().stop()
    typer.echo("stopped")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="machine-readable")) -> None:
    """The pipeline at a glance: processes, Kafka lag, spool, champion, review and retrain per classifier."""
    from infra.settings import get_settings
    from sift.status import pipeline_status, render

    result = pipeline_status(get_settings())
    typer.echo(result.model_dump_json(indent=2) if as_json else render(result))


def _run_worker(target: str) -> None:
    import importlib
    import logging
    import signal
    import threading

    from infra.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module, func = target.split(":")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    settings = get_settings()
    health = None
    if settings.worker_health_port:
        from infra.health import serve_health

        # the worker loop runs in this thread: the process answers while it runs, and exits when it ends
        health = serve_health(settings.worker_health_port, alive=lambda: not stop.is_set())
    try:
        getattr(importlib.import_module(module), func)(settings, stop)
    finally:
        if health is not None:
            health.shutdown()


@worker.command("review")
def worker_review() -> None:
    """Kafka review-requests -> Label Studio tasks."""
    _run_worker("review.worker:run_review_worker")


@worker.command("reconcile")
def worker_reconcile() -> None:
    """Periodically collect finished reviews that a webhook missed."""
    _run_worker("review.collector:run_reconcile_loop")


@worker.command("dropfolder")
def worker_dropfolder() -> None:
    """Ingest batch feedback files dropped in s3://<bucket>/feedback-uploads/<classifier>/."""
    _run_worker("feedback.dropfolder:run_dropfolder_worker")


@worker.command("gc")
def worker_gc() -> None:
    """Apply retention policies and check drift every SIFT_GC_INTERVAL_SECONDS (default 3600)."""
    _run_worker("sift.gc:run_worker")


@worker.command("retrain")
def worker_retrain() -> None:
    """Count reviewed labels, run due retrain jobs, promote blessed candidates."""
    _run_worker("retrain.worker:run_retrain_worker")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
