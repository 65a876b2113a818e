"""``sift demo``: the typer command (mounted by ``sift/cli.py`` as ``app.command()(demo)``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer


def _quiet() -> None:
    """Hub-free, and no per-model "Loading weights" bars drowning the demo's own progress."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from model import quiet_transformers

    quiet_transformers()
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def demo(
    part: str = typer.Option("all", help="all | experiment (part A only) | loop (part B only)"),
    seeds: int = typer.Option(3, help="seeds of the experiment (>= 3 for a spread)"),
    rounds: int = typer.Option(5, help="query rounds per arm"),
    batch: int = typer.Option(25, help="labels queried per round"),
    initial: int = typer.Option(25, help="random seed labels"),
    pool: int = typer.Option(1000, help="pool texts to query from"),
    test: int = typer.Option(600, help="held-out test texts"),
    layers: int = typer.Option(2, help="encoder layers kept (speed on CPU)"),
    max_length: int = typer.Option(64),
    loop_rounds: int = typer.Option(2, help="review + retrain rounds through the product"),
    loop_labels: int = typer.Option(50, help="reviewed labels per product round (= the retrain trigger)"),
    keep_stack: bool = typer.Option(False, help="leave the demo stack running afterwards"),
    data_dir: Path = typer.Option(Path(".stack/demo"), help="the demo stack's data folder"),
    port_base: int = typer.Option(26000, help="demo ports: base+333 S3, +92 Kafka, +500 MLflow, +80 LS, +800 API"),
    out: Path = typer.Option(Path("docs/demo"), help="where results.json, accuracy.png and demo.md go"),
) -> None:
    """Prove the loop learns: uncertainty vs random labels (several seeds), then the loop through the product."""
    _quiet()
    from demo.corpora import load_corpus
    from demo.experiment import ExperimentConfig, run_experiment, split_corpus
    from demo.loop import LoopConfig, run_loop
    from demo.report import loop_table, reading, table, write_results

    if part not in ("all", "experiment", "loop"):
        raise typer.BadParameter("part must be all, experiment or loop")
    started = time.monotonic()
    cfg = ExperimentConfig(seeds=list(range(seeds)), rounds=rounds, batch=batch, initial_labels=initial,
                           pool_size=pool, test_size=test, num_hidden_layers=layers, max_length=max_length)
    pool_rows, test_rows = split_corpus(load_corpus(cfg.corpus, "train"), load_corpus(cfg.corpus, "test"),
                                        cfg.pool_size, cfg.test_size)
    exp = loop = None
    # the product loop first: it is the part that can fail on the environment, so fail fast
    if part in ("all", "loop"):
        typer.secho("[B] the loop through the product", bold=True)
        lcfg = LoopConfig(data_dir=data_dir, port_base=port_base, rounds=loop_rounds, labels_per_round=loop_labels,
                          keep_stack=keep_stack, num_hidden_layers=layers, max_length=max_length,
                          test_size=test, pool_size=pool)
        loop = run_loop(lcfg, pool_rows, test_rows, say=typer.echo)
        typer.echo(loop_table(loop))
    if part in ("all", "experiment"):
        typer.secho(f"[A] active learning on {cfg.corpus}: {seeds} seeds × {{uncertainty, random}}, "
                    f"{initial} + {rounds}×{batch} labels", bold=True)
        exp = run_experiment(cfg, pool=pool_rows, test=test_rows)
        typer.echo(table(exp))
    wall = time.monotonic() - started
    if exp is not None:
        paths = write_results(out, exp, loop, wall)
        typer.echo("")
        typer.echo(reading(exp, loop))
        typer.secho(f"\nwall time {wall / 60:.1f} min; plot {paths['plot']}, results {paths['results']}, "
                    f"README section {paths['readme_section']}", bold=True)
    else:
        typer.secho(f"\nwall time {wall / 60:.1f} min (part B only: nothing written)", bold=True)
