"""``sift dlq`` (what the pipeline could not process, and what to do about it), ``sift gc``, ``sift drift``."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer

from ops.deadletters import DeadLetterEntry, DeadLetters, NotReplayable

if TYPE_CHECKING:
    from infra.settings import Settings
    from ops.retention import Retention

app = typer.Typer(help="Dead letters: list, show, replay, purge.", no_args_is_help=True)


def _dlq() -> DeadLetters:
    from infra.settings import get_settings

    return DeadLetters(get_settings())


def _select(dlq: DeadLetters, ids: list[str], all_open: bool, classifier: str | None) -> list[DeadLetterEntry]:
    try:
        return dlq.select(ids, all_open, classifier)
    except (LookupError, ValueError) as exc:
        typer.secho(f"error: {exc}" + (" (--all)" if isinstance(exc, ValueError) else ""), fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(1 if isinstance(exc, LookupError) else 2) from exc


@app.command("list")
def list_(
    classifier: str | None = typer.Option(None, help="only this classifier's"),
    closed: bool = typer.Option(False, "--closed", help="also the replayed and purged ones"),
) -> None:
    """Open dead letters grouped by original event: reason, topic, attempts, first and last seen."""
    groups = _dlq().groups(classifier=classifier, include_closed=closed)
    typer.echo(json.dumps([g.model_dump(mode="json") for g in groups], indent=2))


@app.command()
def show(entry_id: str) -> None:
    """One dead letter with its full error and payload."""
    entry = _dlq().get(entry_id)
    if entry is None:
        typer.secho(f"error: no dead letter {entry_id}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(entry.model_dump(mode="json"), indent=2))


@app.command()
def replay(
    ids: list[str] = typer.Argument(None, help="dead-letter ids (see `sift dlq list`)"),
    all_open: bool = typer.Option(False, "--all", help="every open dead letter"),
    classifier: str | None = typer.Option(None, help="with --all: only this classifier's"),
) -> None:
    """Send payloads back to their original topics once the cause is fixed (consumers dedupe by event id)."""
    dlq = _dlq()
    try:
        done = dlq.replay(_select(dlq, ids or [], all_open, classifier))
    except NotReplayable as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({"replayed": done}))


@app.command()
def purge(
    ids: list[str] = typer.Argument(None, help="dead-letter ids"),
    all_open: bool = typer.Option(False, "--all", help="every open dead letter"),
    classifier: str | None = typer.Option(None, help="with --all: only this classifier's"),
) -> None:
    """Close dead letters that need no replay."""
    dlq = _dlq()
    done = dlq.purge(_select(dlq, ids or [], all_open, classifier))
    typer.echo(json.dumps({"purged": done}))


def register_commands(root: typer.Typer, make_retention: Callable[[Settings], Retention]) -> None:
    """Add ``sift gc`` and ``sift drift`` to the root CLI; the composition root supplies the retention
    (with the review stage's task pruner, which ops may not import)."""

    @root.command("gc")
    def gc(
        classifier: str | None = typer.Option(None, help="only this classifier (shared prediction segments skipped)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="report what would be deleted, delete nothing"),
        now: datetime | None = typer.Option(None, help="apply the policies as of this time (UTC), default now"),
    ) -> None:
        """Apply every classifier's retention policy once: predictions, uploads, finished review tasks,
        model versions beyond the newest N (never the champion's lineage), model cache."""
        from infra.settings import get_settings
        from infra.tenants import NotFound

        at = (now.replace(tzinfo=UTC) if now.tzinfo is None else now) if now else None
        try:
            report = make_retention(get_settings()).run(at, classifier=classifier, dry_run=dry_run)
        except NotFound as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps(report.model_dump(mode="json"), indent=2))

    @root.command("drift")
    def drift(
        name: str,
        full: bool = typer.Option(False, "--full", help="also the reference and current distributions"),
    ) -> None:
        """PSI of the champion's recent predictions (labels, confidence) against its evaluation reference."""
        from infra.objectstore import ObjectStore
        from infra.settings import get_settings
        from infra.tenants import NotFound
        from ops.drift import Drift

        settings = get_settings()
        try:
            report = Drift(settings, ObjectStore(settings)).check(name, alert=False)
        except NotFound as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps(report.model_dump(mode="json", exclude=None if full else {"reference", "current"}),
                              indent=2))
