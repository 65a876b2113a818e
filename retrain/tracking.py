"""Train, record and register: one MLflow run per training, one registered version per run.

The run carries the lineage TFX-style pipelines need (dataset fingerprint, label counts, base model,
parent version, code version), the model directory as artifact ``model`` and the report under
``report/``. Uses ``MlflowClient`` with explicit run ids rather than the fluent API, so a worker
process never depends on global "active run" state.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from infra.registry import ChampionMoved, Registry, configure_mlflow
from infra.settings import resolve_base_model
from infra.tenants import ClassifierConfig
from model.evaluate import REFERENCE_ARTIFACT
from model.train import TrainResult, TrainSpec, fine_tune
from retrain.dataio import LabeledText, fingerprint, label_counts, stratified_split
from retrain.report import write_report


class RegisteredModel(BaseModel):
    classifier: str
    version: str
    run_id: str
    model_uri: str
    source: str
    is_champion: bool
    metrics: dict[str, float]
    dataset_fingerprint: str
    eval_fingerprint: str | None = None
    parent_version: str | None = None
    seconds: float
    stopped_by_time_budget: bool = False
    model_dir: str | None = None  # local copy, only kept when a work_dir was given


def git_commit(cwd: Path | None = None) -> str | None:
    """The code version of this checkout, or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def train_spec(cfg: ClassifierConfig, **overrides: Any) -> TrainSpec:
    """What to train for ``cfg``: the one place its retrain policy and base model become a ``TrainSpec``.

    ``overrides`` are ``TrainSpec`` fields (a CLI flag, a candidate's settings, a job's time share);
    a None override keeps the policy's value.
    """
    policy = cfg.retrain
    values: dict[str, Any] = {
        "labels": list(cfg.labels), "classifier": cfg.name, "base_model": resolve_base_model(cfg.base_model or None),
        "epochs": policy.epochs, "learning_rate": policy.learning_rate, "batch_size": policy.batch_size,
        "max_length": policy.max_length, "time_budget_s": policy.time_budget_s,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainSpec(**values)


def train_and_register(
    cfg: ClassifierConfig,
    rows: list[LabeledText],
    *,
    registry: Registry,
    spec: TrainSpec | None = None,
    eval_rows: list[LabeledText] | None = None,
    make_champion_if_none: bool = True,
    run_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
    parent_version: str | None = None,
    work_dir: str | Path | None = None,
    artifact_location: str | None = None,
    label_curve: list[tuple[int, float]] | None = None,
    progress: bool = True,
) -> RegisteredModel:
    """Fine-tune ``spec`` (default: ``train_spec(cfg)``) on ``rows``, log everything to experiment
    ``sift-<name>``, register a new version.

    Without ``eval_rows`` a stratified ``cfg.retrain.eval_share`` is held out, so every version has
    held-out metrics. A warm start (``spec.init_from``) passes its registry ``parent_version`` for
    lineage. ``artifact_location`` only applies when the experiment is created (tests use a local
    folder; servers proxy artifacts themselves).
    """
    spec = spec or train_spec(cfg)
    if spec.labels != list(cfg.labels) or spec.classifier != cfg.name:
        raise ValueError(f"the training spec is for {spec.classifier!r} {spec.labels}, not {cfg.name!r} {cfg.labels}")
    spec.check_rows(rows, eval_rows)  # before a run exists: bad rows leave no failed run behind
    configure_mlflow(registry.settings)
    eval_source = "given"
    if eval_rows is None:
        counts = label_counts(rows)
        if min(counts.values()) >= 2:
            rows, eval_rows = stratified_split(rows, cfg.retrain.eval_share, seed=spec.seed)
            eval_source = "split"
        else:
            eval_rows, eval_source = [], "none"

    tags = {
        "sift.classifier": cfg.name,
        "sift.dataset_fingerprint": fingerprint(rows),
        "sift.eval_source": eval_source,
        **({"mlflow.source.git.commit": c} if (c := git_commit()) else {}),
        **({"sift.parent_version": parent_version} if parent_version else {}),
        **(extra_tags or {}),
    }
    run_id = registry.create_run(cfg.name, run_name=run_name, tags=tags, artifact_location=artifact_location)
    own_dir = work_dir is None
    base_dir = Path(tempfile.mkdtemp(prefix=f"sift-train-{cfg.name}-")) if own_dir else Path(work_dir)
    try:
        counts = label_counts(rows)
        registry.log_params(run_id, {
            **spec.model_dump(exclude={"labels", "classifier"}),
            "labels": json.dumps(cfg.labels), "train_examples": len(rows), "eval_examples": len(eval_rows),
            "dataset_fingerprint": fingerprint(rows),
            "eval_fingerprint": fingerprint(eval_rows) if eval_rows else None,
            "parent_version": parent_version,
            **{f"count.{label}": counts.get(label, 0) for label in cfg.labels},
        })

        def on_epoch(rec: Any) -> None:
            registry.log_metrics(run_id, {"epoch_train_loss": rec.train_loss, "epoch_eval_accuracy": rec.eval_accuracy,
                                          "epoch_eval_macro_f1": rec.eval_macro_f1}, step=rec.step)

        result: TrainResult = fine_tune(rows, spec, out_dir=base_dir / "model", eval_rows=eval_rows or None,
                                        progress=progress, on_epoch=on_epoch)
        registry.log_metrics(run_id, result.metrics, step=result.steps)
        report_dir = base_dir / "report"
        write_report(report_dir, result, label_curve=label_curve or (),
                     extra={"classifier": cfg.name, "run_id": run_id, "eval_source": eval_source})
        registry.log_artifacts(run_id, result.model_dir, "model")
        registry.log_artifacts(run_id, report_dir, "report")
        if result.eval_report is not None and result.eval_report.reference is not None:
            # the version's baseline for drift monitoring (ops/drift.py reads it)
            registry.log_dict(run_id, result.eval_report.reference.model_dump(mode="json"), REFERENCE_ARTIFACT)
        ref = registry.register(cfg.name, run_id, artifact_path="model", tags={
            "dataset_fingerprint": result.dataset_fingerprint,
            **({"parent_version": parent_version} if parent_version else {}),
            **{k: f"{result.metrics[k]:.6f}" for k in ("accuracy", "macro_f1") if k in result.metrics},
        })
        is_champion = False
        if make_champion_if_none and registry.champion(cfg.name) is None:  # a registry error raises
            with contextlib.suppress(ChampionMoved):  # another process made its version champion first
                registry.set_champion(cfg.name, ref.version, expected=None)
                is_champion = True
        registry.set_run_tag(run_id, "sift.model_version", ref.version)
        registry.end_run(run_id)
    except BaseException:
        with contextlib.suppress(Exception):
            registry.end_run(run_id, "FAILED")
        raise
    finally:
        if own_dir:
            shutil.rmtree(base_dir, ignore_errors=True)
    return RegisteredModel(
        classifier=cfg.name, version=ref.version, run_id=run_id, model_uri=ref.uri, source=ref.source,
        is_champion=is_champion, metrics=result.metrics, dataset_fingerprint=result.dataset_fingerprint,
        eval_fingerprint=fingerprint(eval_rows) if eval_rows else None, parent_version=parent_version,
        seconds=result.seconds, stopped_by_time_budget=result.stopped_by_time_budget,
        model_dir=None if own_dir else result.model_dir,
    )
