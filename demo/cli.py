"""``sift demo``: the typer command (mounted by ``sift/cli.py`` as ``app.command()(demo)``)."""

from __future__ import annotations

import json
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
    loop_seeds: int = typer.Option(3, help="seeds of the product loop: each runs an uncertainty and a random arm"),
    loop_rounds: int = typer.Option(4, help="review + retrain rounds through the product"),
    loop_labels: int = typer.Option(25, help="reviewed labels per product round (= the retrain trigger)"),
    loop_seed_labels: int = typer.Option(100, help="random seed labels of the product loop's seed models"),
    loop_epochs: int = typer.Option(2, help="epochs of each retrain candidate in the product loop"),
    loop_pool: int = typer.Option(2000, help="pool texts the product loop streams from (seed labels + traffic)"),
    loop_sample_rate: float = typer.Option(0.2, help="the random arm's review_sample_rate"),
    retrain_workers: int = typer.Option(2, help="retrain workers of the product loop"),
    keep_stack: bool = typer.Option(False, help="leave the demo stack running afterwards"),
    data_dir: Path = typer.Option(Path(".stack/demo"), help="the demo stack's data folder"),
    port_base: int = typer.Option(26000, help="demo ports: base+333 S3, +92 Kafka, +500 MLflow, +80 LS, +800 API"),
    out: Path = typer.Option(Path("docs/demo"), help="where results.json, accuracy.png and demo.md go"),
) -> None:
    """Prove the loop learns: uncertainty vs random labels (several seeds), then the loop through the product."""
    _quiet()
    from demo.corpora import load_corpus
    from demo.experiment import ExperimentConfig, ExperimentResult, run_experiment, split_corpus
    from demo.loop import LoopConfig, run_loop
    from demo.report import loop_reading, loop_table, reading, table, verdict_table, write_results

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
        typer.secho(f"[B] the loop through the product: {loop_seeds} seeds × {{uncertainty, random}}", bold=True)
        lpool, _ = split_corpus(load_corpus(cfg.corpus, "train"), load_corpus(cfg.corpus, "test"), loop_pool,
                                cfg.test_size)
        lcfg = LoopConfig(data_dir=data_dir, port_base=port_base, seeds=list(range(loop_seeds)), rounds=loop_rounds,
                          labels_per_round=loop_labels, sample_rate=loop_sample_rate,
                          seed_labels=loop_seed_labels, epochs=loop_epochs, retrain_workers=retrain_workers,
                          keep_stack=keep_stack, num_hidden_layers=layers, max_length=max_length, test_size=test,
                          pool_size=loop_pool)
        loop = run_loop(lcfg, lpool, test_rows, say=typer.echo)
        typer.echo(loop_table(loop))
        typer.echo(verdict_table(loop))
        typer.echo(loop_reading(loop))
    if part in ("all", "experiment"):
        typer.secho(f"[A] active learning on {cfg.corpus}: {seeds} seeds × {{uncertainty, random}}, "
                    f"{initial} + {rounds}×{batch} labels", bold=True)
        exp = run_experiment(cfg, pool=pool_rows, test=test_rows)
        typer.echo(table(exp))
    elif (out / "results.json").exists():  # part B alone: written next to the experiment already there
        data = json.loads((out / "results.json").read_text())
        exp = ExperimentResult.model_validate(data["experiment"])
        if exp.test_size != test:
            raise typer.BadParameter(f"{out}/results.json's experiment used {exp.test_size} test texts, not {test}")
    wall = time.monotonic() - started
    if exp is not None:
        if part == "loop":
            wall += exp.seconds  # the parts' sum: the experiment's time is the one in results.json
        paths = write_results(out, exp, loop, wall)
        typer.echo("")
        typer.echo(reading(exp))
        typer.secho(f"\nwall time {wall / 60:.1f} min; plots in {paths['plot'].parent}, results {paths['results']}, "
                    f"README section {paths['readme_section']}", bold=True)
    else:
        typer.secho(f"\nwall time {wall / 60:.1f} min (part B only, no experiment results: nothing written)", bold=True)
