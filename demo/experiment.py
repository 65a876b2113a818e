"""Part A of ``sift demo``: uncertainty-routed labels against random labels at the same budget.

Why in-process and not through the services: the comparison needs several seeds and many rounds,
and the quantity under test is *which* texts get labelled, not the plumbing. It still uses the
exact code the product trains and scores with (``model.train.fine_tune``, ``model.runtime
.LoadedModel``, ``model.evaluate``), and the query rule is the one Sift's review queue orders by:
the smallest top-2 margin ("breaking ties", Schröder et al. 2022). Part B runs the real loop.

Protocol (a scaled-down version of Schröder et al.'s 25 seed labels + rounds of 25 queries):
a fixed held-out test set that is never queried or trained on; a pool to query from; per seed, the
same random seed labels for both arms (so round 0 is one shared model); then ``rounds`` rounds of
``batch`` labels picked either by margin or at random; after each round a retrain and a score on
the test set. Retraining warm-starts from the previous round's model (as the product's ``warm``
candidate does); round 0 is fresh from the base encoder. A minimum number of optimiser steps per
round keeps tiny labelled sets from being undertrained (4 epochs of 25 texts are 7 steps).
"""

from __future__ import annotations

import logging
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from retrain.dataio import LabeledText, stratified_sample

log = logging.getLogger(__name__)

Strategy = Literal["uncertainty", "random"]
STRATEGIES: tuple[Strategy, ...] = ("uncertainty", "random")


class ExperimentConfig(BaseModel):
    """Sized to finish in minutes on 2 shared CPU cores (measured: see docs/demo.md)."""

    corpus: str = "reuters-r8"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    initial_labels: int = 25
    rounds: int = 5
    batch: int = 25
    pool_size: int = 1000
    test_size: int = 600
    num_hidden_layers: int = 2
    max_length: int = 64
    epochs: float = 2.0
    min_steps: int = 24
    learning_rate: float = 5e-4
    head_learning_rate: float = 1e-3
    batch_size: int = 16
    warm_start: bool = True
    base_model: str = ""
    strategies: list[Strategy] = Field(default_factory=lambda: list(STRATEGIES))

    @property
    def final_labels(self) -> int:
        return self.initial_labels + self.rounds * self.batch


class RoundResult(BaseModel):
    round: int
    labels: int
    accuracy: float
    macro_f1: float
    test_examples: int
    classes_in_labels: int
    train_steps: int
    train_seconds: float
    queried: list[int] = Field(default_factory=list, description="pool indices labelled before this round's training")
    query_margin_mean: float | None = Field(default=None, description="mean top-2 margin of the queried texts")
    queried_labels: dict[str, int] = Field(default_factory=dict, description="true labels of the texts queried")


class ArmResult(BaseModel):
    seed: int
    strategy: Strategy
    rounds: list[RoundResult]
    seconds: float


class CurvePoint(BaseModel):
    labels: int
    accuracy_mean: float
    accuracy_std: float
    accuracy_min: float
    accuracy_max: float
    macro_f1_mean: float
    macro_f1_std: float
    macro_f1_min: float
    macro_f1_max: float


class ExperimentResult(BaseModel):
    config: ExperimentConfig
    labels: list[str]
    pool_size: int
    test_size: int
    test_counts: dict[str, int]
    arms: list[ArmResult]
    curves: dict[str, list[CurvePoint]]
    seconds: float
    machine: dict[str, str | int]


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-2 margin per row: small means the model is torn between two labels."""
    if probs.shape[1] < 2:
        return probs[:, 0]
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return np.abs(top2[:, 1] - top2[:, 0])


def select(strategy: Strategy, unlabeled: Sequence[int], k: int, rng: random.Random,
           probs: np.ndarray | None = None) -> tuple[list[int], float | None]:
    """Pick ``k`` pool indices from ``unlabeled``; ``probs`` are the model's scores on them (in order)."""
    k = min(k, len(unlabeled))
    if strategy == "random":
        return rng.sample(list(unlabeled), k), None
    assert probs is not None and len(probs) == len(unlabeled)
    m = margins(probs)
    order = np.argsort(m, kind="stable")[:k]  # smallest margin first; ties by pool order
    return [unlabeled[int(i)] for i in order], float(m[order].mean()) if k else None


def split_corpus(rows: Sequence[LabeledText], test_rows: Sequence[LabeledText], pool_size: int,
                 test_size: int) -> tuple[list[LabeledText], list[LabeledText]]:
    """(pool, test): stratified slices, de-duplicated so no test text also sits in the pool."""
    test = stratified_sample(list(test_rows), test_size, seed=0)
    test_texts = {r.text for r in test}
    seen: set[str] = set()
    candidates = []
    for r in rows:
        if r.text not in test_texts and r.text not in seen:
            seen.add(r.text)
            candidates.append(r)
    return stratified_sample(candidates, pool_size, seed=0), test


def _epochs_for(n: int, cfg: ExperimentConfig) -> float:
    return max(cfg.epochs, cfg.min_steps * cfg.batch_size / max(1, n))


def _train(rows: list[LabeledText], labels: list[str], out: Path, cfg: ExperimentConfig, seed: int,
           init_from: Path | None) -> tuple[int, float]:
    from infra.settings import resolve_base_model
    from model.train import TrainSpec, fine_tune

    spec = TrainSpec(
        labels=labels, base_model=resolve_base_model(cfg.base_model or None), epochs=_epochs_for(len(rows), cfg),
        learning_rate=cfg.learning_rate, head_learning_rate=cfg.head_learning_rate, batch_size=cfg.batch_size,
        max_length=cfg.max_length, num_hidden_layers=None if init_from else cfg.num_hidden_layers,
        init_from=init_from, seed=seed)
    res = fine_tune(rows, spec, out_dir=out, progress=False)
    return res.steps, res.seconds


def _score(model_dir: Path, test: list[LabeledText], pool: list[LabeledText],
           unlabeled: list[int] | None) -> tuple[float, float, np.ndarray | None]:
    """(accuracy, macro-F1) on the held-out test set, and the pool scores the next query needs."""
    from model.evaluate import evaluate
    from model.runtime import LoadedModel

    model = LoadedModel.load(model_dir)
    report = evaluate(model, test)
    probs = model.predict_proba([pool[i].text for i in unlabeled]) if unlabeled is not None else None
    return report.accuracy, report.macro_f1, probs


def run_seed(seed: int, pool: list[LabeledText], test: list[LabeledText], labels: list[str],
             cfg: ExperimentConfig, work: Path, tick: Callable[[str], None] = lambda _: None) -> list[ArmResult]:
    """Both arms of one seed; round 0 (the random seed labels) is trained once and shared."""
    rng = random.Random(seed)
    initial = rng.sample(range(len(pool)), cfg.initial_labels)
    started = time.monotonic()
    d0 = work / f"s{seed}-r0"
    steps, secs = _train([pool[i] for i in initial], labels, d0, cfg, seed, None)
    need_pool = "uncertainty" in cfg.strategies
    rest0 = [i for i in range(len(pool)) if i not in set(initial)]
    acc, f1, probs0 = _score(d0, test, pool, rest0 if need_pool else None)
    base = RoundResult(round=0, labels=len(initial), accuracy=acc, macro_f1=f1, test_examples=len(test),
                       classes_in_labels=len({pool[i].label for i in initial}), train_steps=steps,
                       train_seconds=round(secs, 2), queried=sorted(initial))
    shared_s = time.monotonic() - started
    tick(f"seed {seed} round 0: acc {acc:.3f}")
    out = []
    for strategy in cfg.strategies:
        t0 = time.monotonic()
        arm_rng = random.Random(f"{seed}:{strategy}")
        labelled = list(initial)
        rounds = [base]
        prev, probs = d0, probs0
        for r in range(1, cfg.rounds + 1):
            taken = set(labelled)
            unlabeled = [i for i in range(len(pool)) if i not in taken]
            picked, margin = select(strategy, unlabeled, cfg.batch, arm_rng, probs)
            labelled += picked
            d = work / f"s{seed}-{strategy}-r{r}"
            steps, secs = _train([pool[i] for i in labelled], labels, d, cfg, seed,
                                 prev if cfg.warm_start else None)
            taken = set(labelled)
            nxt = [i for i in range(len(pool)) if i not in taken]
            want_pool = strategy == "uncertainty" and r < cfg.rounds
            acc, f1, probs = _score(d, test, pool, nxt if want_pool else None)
            rounds.append(RoundResult(
                round=r, labels=len(labelled), accuracy=acc, macro_f1=f1, test_examples=len(test),
                classes_in_labels=len({pool[i].label for i in labelled}), train_steps=steps,
                train_seconds=round(secs, 2), queried=sorted(picked), query_margin_mean=margin,
                queried_labels=_counts(pool[i].label for i in picked)))
            if prev != d0:
                shutil.rmtree(prev, ignore_errors=True)
            prev = d
            tick(f"seed {seed} {strategy} round {r}: acc {acc:.3f}")
        shutil.rmtree(prev, ignore_errors=True)
        out.append(ArmResult(seed=seed, strategy=strategy, rounds=rounds,
                             seconds=round(time.monotonic() - t0 + shared_s / len(cfg.strategies), 2)))
    shutil.rmtree(d0, ignore_errors=True)
    return out


def _counts(labels: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for label in labels:
        out[label] = out.get(label, 0) + 1
    return dict(sorted(out.items()))


def spread(name: str, values: Sequence[float]) -> dict[str, float]:
    """``<name>_mean``, ``_std`` (over the seeds run, not a sample estimate), ``_min`` and ``_max``: how
    every demo curve states its spread over seeds, offline and through the product alike."""
    v = np.asarray(values, dtype=float)
    return {f"{name}_mean": float(v.mean()), f"{name}_std": float(v.std()),
            f"{name}_min": float(v.min()), f"{name}_max": float(v.max())}


def curves(arms: list[ArmResult]) -> dict[str, list[CurvePoint]]:
    """Mean, standard deviation and range over seeds, per strategy and label count."""
    out: dict[str, list[CurvePoint]] = {}
    for strategy in dict.fromkeys(a.strategy for a in arms):
        runs = [a for a in arms if a.strategy == strategy]
        points = []
        for i in range(min(len(a.rounds) for a in runs)):
            points.append(CurvePoint(labels=runs[0].rounds[i].labels,
                                     **spread("accuracy", [a.rounds[i].accuracy for a in runs]),
                                     **spread("macro_f1", [a.rounds[i].macro_f1 for a in runs])))
        out[strategy] = points
    return out


def machine_info() -> dict[str, str | int]:
    import os

    from model import torch_info

    return {"python": platform.python_version(), **torch_info(), "cpus": os.cpu_count() or 0,
            "platform": platform.platform()}


def run_experiment(cfg: ExperimentConfig, *, pool: list[LabeledText] | None = None,
                   test: list[LabeledText] | None = None, work_dir: Path | None = None,
                   progress: bool = True) -> ExperimentResult:
    """Run every seed and arm; ``pool``/``test`` override the corpus (the tests pass a tiny one)."""
    from tqdm.auto import tqdm

    if pool is None or test is None:
        from demo.corpora import load_corpus

        pool, test = split_corpus(load_corpus(cfg.corpus, "train"), load_corpus(cfg.corpus, "test"),
                                  cfg.pool_size, cfg.test_size)
    if cfg.final_labels > len(pool):
        raise ValueError(f"{cfg.final_labels} labels asked for but the pool has {len(pool)} texts")
    overlap = {r.text for r in pool} & {r.text for r in test}
    if overlap:
        raise ValueError(f"{len(overlap)} test texts are also in the pool: the test set must be held out")
    labels = sorted({r.label for r in [*pool, *test]})
    started = time.monotonic()
    own = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="sift-demo-al-")) if own else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    trainings = len(cfg.seeds) * (1 + cfg.rounds * len(cfg.strategies))
    bar = tqdm(total=trainings, desc="active learning", unit="model", disable=not progress, dynamic_ncols=True)

    def tick(msg: str) -> None:
        bar.update(1)
        bar.set_postfix_str(msg)

    arms: list[ArmResult] = []
    try:
        for seed in cfg.seeds:
            arms += run_seed(seed, pool, test, labels, cfg, work, tick)
    finally:
        bar.close()
        if own:
            shutil.rmtree(work, ignore_errors=True)
    counts: dict[str, int] = {}
    for r in test:
        counts[r.label] = counts.get(r.label, 0) + 1
    return ExperimentResult(
        config=cfg, labels=labels, pool_size=len(pool), test_size=len(test), test_counts=dict(sorted(counts.items())),
        arms=arms, curves=curves(arms), seconds=round(time.monotonic() - started, 1), machine=machine_info())


def expected_trainings(cfg: ExperimentConfig) -> int:
    return len(cfg.seeds) * (1 + cfg.rounds * len(cfg.strategies))


__all__ = ["ExperimentConfig", "ExperimentResult", "run_experiment", "select", "margins", "split_corpus",
           "curves", "expected_trainings"]
