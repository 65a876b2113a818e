"""`sift review …`: operator commands of the review stage (mounted by sift/cli.py)."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="Human review queue in Label Studio.", no_args_is_help=True)


@app.command("status")
def status_cmd(name: str = typer.Argument(..., help="classifier name")) -> None:
    """Pending tasks, backlog, reviewed counts per label, agreement, oldest pending age, and the
    projected daily review load (traffic and thresholds in force on the serving replicas)."""
    from infra.settings import get_settings
    from infra.tenants import NotFound
    from review.status import review_status

    try:
        st = review_status(get_settings(), name)
    except NotFound as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(st.model_dump(), indent=2))


@app.command("reconcile")
def reconcile_cmd(name: str = typer.Argument(..., help="classifier name"),
                  full: bool = typer.Option(False, help="scan every finished task, not only recent ones")) -> None:
    """Collect finished reviews whose webhook was missed (one pass)."""
    from infra.settings import get_settings
    from review.collector import reconcile

    typer.echo(reconcile(get_settings(), name, full=full).model_dump_json(indent=2))


@app.command("provision")
def provision_cmd(name: str = typer.Argument(..., help="classifier name")) -> None:
    """Create or repair the classifier's Label Studio project and webhook."""
    from infra.objectstore import ObjectStore
    from infra.settings import get_settings
    from infra.tenants import TenantStore
    from review.labelstudio import ensure_project

    settings = get_settings()
    tenants = TenantStore(ObjectStore(settings))
    typer.echo(f"project {ensure_project(settings, tenants, tenants.require(name))}")


@app.command("rotate-webhook-secret")
def rotate_webhook_secret_cmd(name: str = typer.Argument(..., help="classifier name")) -> None:
    """Give the classifier a new webhook secret and re-register its Label Studio webhook with it."""
    from infra.objectstore import ObjectStore
    from infra.settings import get_settings
    from infra.tenants import NotFound, TenantStore
    from review.labelstudio import rotate_webhook_secret

    settings = get_settings()
    try:
        updated = rotate_webhook_secret(settings, TenantStore(ObjectStore(settings)), name)
    except NotFound as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo("rotated" if updated else "rotated; Label Studio is unreachable: the review worker will "
               "re-register the webhook (until then webhooks are refused and reconciliation collects)")
