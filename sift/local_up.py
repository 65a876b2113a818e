"""``sift up``: start the embedded stack, onboard the demo classifier, serve, print where things are."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from infra.local.stack import LocalStack, Topology, local_port
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


WORKERS = ("review", "retrain", "dropfolder", "reconcile", "gc")
SINGLE_WORKERS = {"gc"}  # retention and drift passes: one is enough, two would only repeat them


def start_processes(stack: LocalStack, settings: Settings) -> None:
    """The API replica(s) and workers the stack's topology asks for."""
    start_replicas(stack, settings)
    py = sys.executable
    for worker in WORKERS:
        count = 1 if worker in SINGLE_WORKERS else stack.topology.workers
        for i in range(count):
            name = f"worker-{worker}" if count == 1 else f"worker-{worker}-{i}"
            stack.spawn(name, [py, "-m", "sift.cli", "worker", worker])


def start_replicas(stack: LocalStack, settings: Settings) -> None:
    """The API replica(s), each waited for until its port answers."""
    py = sys.executable
    topology = stack.topology
    if topology.clustered:  # replicas on hidden ports behind the load balancer at public_api_url
        replicas = [(f"api-{i}", port) for i, port in enumerate(topology.api_ports)]
    else:
        replicas = [("api", local_port(settings.public_api_url) or 18000)]
    for name, port in replicas:
        # a replica of a cluster keeps its spool and model cache to itself, as a pod with its own volume
        env = {"SIFT_DATA_DIR": str(stack.data_dir / "replicas" / name)} if topology.clustered else None
        stack.spawn(name, [py, "-m", "uvicorn", "sift.app:create_app", "--factory", "--host", "127.0.0.1",
                           "--port", str(port), "--no-access-log"], env=env, ready_port=port)


def up(settings: Settings, *, with_label_studio: bool, demo: bool, train_rows: int, detach: bool,
       topology: Topology | None = None) -> None:
    stack = LocalStack(settings, die_with_parent=not detach, topology=topology or Topology())
    supervisor = stack.running_supervisor()
    if supervisor is not None:
        typer.secho(f"`sift up` (pid {supervisor}) is already running this stack; stop it with `sift down` first",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    t = stack.topology
    typer.echo("starting S3 (SeaweedFS), Kafka (Tansu), MLflow" + (", Label Studio" if with_label_studio else "")
               + (f"; cluster: {t.brokers} broker(s), {t.api_replicas} API replica(s), {t.workers} worker(s) of "
                  "each kind, PostgreSQL, HAProxy" if t.clustered else ""))
    stack.start(with_label_studio=with_label_studio)
    from infra.bus import Bus

    Bus(settings).ensure_topics()
    key = _ensure_demo(settings, train_rows) if demo else None
    start_processes(stack, settings)
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
