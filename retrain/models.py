"""Read side of the registry for operators: list a classifier's versions, build a version's report.

Shared by ``sift models list/report``, the admin API and ``sift demo``: everything a person needs
to judge a version in one object — metrics on the fixed evaluation set, the blessing verdict,
lineage (dataset version and counts, parent version, job, run link) and the report PNGs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from infra.objectstore import ObjectStore
from infra.registry import Registry, configure_mlflow
from infra.settings import Settings
from retrain.assemble import DatasetVersion, load_dataset_version
from retrain.bless import Verdict, load_verdict


class ModelSummary(BaseModel):
    version: str
    aliases: list[str]
    created_at: datetime | None
    run_id: str | None
    candidate: str | None = None
    job_id: str | None = None
    dataset_version: str | None = None
    parent_version: str | None = None
    macro_f1: float | None = None
    accuracy: float | None = None
    blessed: bool | None = None
    reason: str | None = None


class ModelReport(BaseModel):
    classifier: str
    summary: ModelSummary
    run_url: str | None
    params: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    verdict: Verdict | None = None
    dataset: DatasetVersion | None = None
    report_dir: str | None = None
    pngs: list[str] = Field(default_factory=list)


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "", "none") else None
    except ValueError:
        return None


def _summary(mv: Any) -> ModelSummary:
    tags = dict(mv.tags or {})
    blessed = tags.get("sift.blessed")
    return ModelSummary(
        version=str(mv.version), aliases=sorted(getattr(mv, "aliases", []) or []),
        created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None,
        run_id=mv.run_id, candidate=tags.get("candidate"), job_id=tags.get("job_id"),
        dataset_version=tags.get("dataset_version"), parent_version=tags.get("parent_version"),
        macro_f1=_float(tags.get("sift.bless_macro_f1") or tags.get("macro_f1")), accuracy=_float(tags.get("accuracy")),
        blessed=None if blessed is None else blessed == "true", reason=tags.get("sift.bless_reason"),
    )


def list_models(registry: Registry, classifier: str) -> list[ModelSummary]:
    out = [_summary(mv) for mv in registry.model_versions(classifier)]
    aliases = registry.aliases(classifier)
    for s in out:  # search results carry no aliases: the registered model has them
        s.aliases = sorted(a for a, v in aliases.items() if v == s.version)
    return out


def model_report(settings: Settings, classifier: str, version: str, *, out_dir: str | Path | None = None,
                 registry: Registry | None = None, store: ObjectStore | None = None) -> ModelReport:
    """Everything about one version; with ``out_dir`` the run's ``report/`` artifacts are downloaded there."""
    import mlflow

    registry = registry or Registry(settings)
    store = store or ObjectStore(settings)
    mv = registry.model_version(classifier, str(version))
    summary = _summary(mv)
    report = ModelReport(classifier=classifier, summary=summary, run_url=None, tags=dict(mv.tags or {}),
                         verdict=load_verdict(store, classifier, str(version)))
    if summary.dataset_version:
        report.dataset = load_dataset_version(store, classifier, summary.dataset_version)
    if mv.run_id:
        run = registry.run(mv.run_id)
        report.params, report.metrics = dict(run.data.params), dict(run.data.metrics)
        report.run_url = registry.run_url(mv.run_id)
        if out_dir is not None:
            configure_mlflow(settings)
            target = Path(out_dir) / classifier / str(version)
            target.mkdir(parents=True, exist_ok=True)
            local = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="report",
                                                        dst_path=str(target))
            report.report_dir = local
            report.pngs = sorted(str(p) for p in Path(local).rglob("*.png"))
    return report
