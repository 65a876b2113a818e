"""``sift up``: start the embedded stack, onboard the demo classifier, serve, print where things are."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from infra.local.stack import LocalStack, local_port
from infra.settings import Settings

DEMO_CLASSIFIER = "news"
DEMO_CORPUS = "reuters-r8"


def _credentials_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "credentials.json"


def _ensure_demo(settings: Settings, train_rows: int) -> str | None:
    """Create the demo classifier (once) and train its first model when the registry has none."""
    from demo.corpora import load_corpus
    from infra.objectstore import ObjectStore
    from infra.registry import Registry
    from infra.tenants import TenantStore
    from sift.onboarding import build_config, create_classifier

    creds = _credentials_path(settings)
    tenants = TenantStore(ObjectStore(settings))
    cfg = tenants.get(DEMO_CLASSIFIER)
    if cfg is None:
        rows = load_corpus(DEMO_CORPUS, "train")
        labels = sorted({r.label for r in rows})
        cfg = build_config(name=DEMO_CLASSIFIER, labels=labels, threshold=0.7,
                           description="Reuters-21578 R8 newswire topics (demo)")
        cfg, key, warnings = create_classifier(settings, tenants, cfg)
        for w in warnings:
            typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
        creds.write_text(json.dumps({"classifier": DEMO_CLASSIFIER, "api_key": key}))
        os.chmod(creds, 0o600)
    if Registry(settings).champion(DEMO_CLASSIFIER) is None:
        from retrain.dataio import stratified_sample
        from sift.training import train_rows_command

        typer.echo(f"training the first {DEMO_CLASSIFIER!r} model on {train_rows} {DEMO_CORPUS} texts ...")
        rows = stratified_sample(load_corpus(DEMO_CORPUS, "train"), train_rows, seed=0)
        train_rows_command(DEMO_CLASSIFIER, rows, epochs=2)
    return json.loads(creds.read_text())["api_key"] if creds.exists() else None


def up(settings: Settings, *, with_label_studio: bool, demo: bool, train_rows: int, detach: bool) -> None:
    stack = LocalStack(settings, die_with_parent=not detach)
    supervisor = stack.running_supervisor()
    if supervisor is not None:
        typer.secho(f"`sift up` (pid {supervisor}) is already running this stack; stop it with `sift down` first",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo("starting S3 (SeaweedFS), Kafka (Tansu), MLflow" + (", Label Studio" if with_label_studio else ""))
    stack.start(with_label_studio=with_label_studio)
    from infra.bus import Bus

    Bus(settings).ensure_topics()
    key = _ensure_demo(settings, train_rows) if demo else None
    api_port = local_port(settings.public_api_url) or 18000
    py = sys.executable
    stack.spawn("api", [py, "-m", "uvicorn", "sift.app:create_app", "--factory", "--host", "127.0.0.1",
                        "--port", str(api_port), "--no-access-log"], ready_port=api_port)
    for worker in ("review", "retrain", "dropfolder", "reconcile", "gc"):
        stack.spawn(f"worker-{worker}", [py, "-m", "sift.cli", "worker", worker])
    api = settings.public_api_url
    typer.echo("")
    typer.secho("Sift is up", fg=typer.colors.GREEN, bold=True)
    typer.echo(f"  API            {api}   (docs {api}/docs, metrics {api}/metrics)")
    typer.echo(f"  admin key      {settings.admin_key}   (header x-admin-key)")
    if key:
        typer.echo(f"  demo API key   {key}   (classifier {DEMO_CLASSIFIER!r}, header x-api-key)")
        typer.echo(f"  try            curl -s -X POST {api}/v1/classifiers/{DEMO_CLASSIFIER}/classify "
                   f"-H 'x-api-key: {key}' -H 'content-type: application/json' "
                   "-d '{\"text\": \"oil prices rose as opec cut crude output\"}'")
    if with_label_studio:
        typer.echo(f"  Label Studio   {settings.label_studio_url}   login {settings.label_studio_username} / "
                   f"{settings.label_studio_password}")
    typer.echo(f"  MLflow         {settings.mlflow_tracking_uri}")
    typer.echo(f"  S3             {settings.s3_endpoint}   bucket {settings.bucket}")
    typer.echo(f"  Kafka          {settings.kafka_bootstrap}")
    typer.echo(f"  logs           {stack.log_dir}")
    if detach:
        typer.echo("running in the background; stop with `make down`")
        return
    typer.echo("serving; Ctrl-C stops everything")
    stack.supervise()
