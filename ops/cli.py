"""``sift dlq``: what the pipeline could not process, and what to do about it."""

from __future__ import annotations

import json

import typer

from ops.deadletters import DeadLetterEntry, DeadLetters, NotReplayable

app = typer.Typer(help="Dead letters: list, show, replay, purge.", no_args_is_help=True)


def _dlq() -> DeadLetters:
    from infra.settings import get_settings

    return DeadLetters(get_settings())


def _select(dlq: DeadLetters, ids: list[str], all_open: bool, classifier: str | None) -> list[DeadLetterEntry]:
    if not ids and not all_open:
        typer.secho("error: name dead-letter ids or pass --all", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    entries = dlq.entries(classifier=classifier, include_closed=bool(ids))
    if all_open:
        return entries
    by_id = {e.id: e for e in entries}
    missing = [i for i in ids if i not in by_id]
    if missing:
        typer.secho(f"error: no dead letter {', '.join(missing)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    return [by_id[i] for i in ids]


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
