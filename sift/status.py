"""``sift status``: the whole pipeline at a glance, assembled from each stage's own status reader.

Wiring only: every number comes from the owner of its store (the local stack's pid files, Kafka
committed offsets, the local spool, the registry, the review queue, the retrain job records, drift from ops).
A part that cannot be read shows its error instead of hiding the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from infra.settings import Settings

T = TypeVar("T")

# consumer groups whose lag matters, with the topics they read
GROUPS = {"review": ["review-requests"], "retrain": ["reviewed-labels"]}  # short names


class ClassifierStatus(BaseModel):
    name: str
    threshold: float | None = Field(default=None, description="None: derived from the review budget")
    champion: str | None = None
    backlog: int | None = None
    pending_tasks: int | None = None
    reviewed: int | None = None
    last_retrain: str | None = None  # the last job's status
    last_retrain_reason: str | None = None  # and why, whole: a verdict's interval is the point of it
    drift: str | None = None
    errors: list[str] = []


class PipelineStatus(BaseModel):
    processes: dict[str, str]
    lag: dict[str, dict[str, int]]
    # partitions each topic has; `warnings` names those with fewer than SIFT_KAFKA_PARTITIONS
    topics: dict[str, int] = {}
    warnings: list[str] = []
    spool_events: int | None
    spool_oldest_age_s: float | None
    classifiers: list[ClassifierStatus]
    errors: list[str] = []


def _try(errors: list[str], what: str, read: Callable[[], T]) -> T | None:
    try:
        return read()
    except Exception as exc:  # a dead part is shown as such, the rest still reads
        errors.append(f"{what}: {type(exc).__name__}: {exc}"[:300])
        return None


def _process_state(row: dict[str, Any]) -> str:
    if row.get("external"):
        return f"external {row.get('url', '')}"
    if not row.get("running"):
        return "down"
    return "up" if row.get("ready", True) else "starting"


def pipeline_status(settings: Settings) -> PipelineStatus:
    from infra.bus import Bus, consumer_lag
    from infra.local.stack import LocalStack
    from infra.objectstore import ObjectStore
    from infra.registry import Registry
    from infra.spool import Spool
    from infra.tenants import TenantStore
    from ops.drift import Drift
    from retrain.job import list_jobs
    from review.status import review_status

    errors: list[str] = []
    processes = {name: _process_state(row) for name, row in LocalStack(settings).status().items()}
    lag = {Bus(settings).group(group):
           _try(errors, f"lag of {group}", lambda g=group, t=topics: consumer_lag(settings, g, t)) or {}
           for group, topics in GROUPS.items()}
    topics = _try(errors, "topics", lambda: Bus(settings, client_id="sift-status").topic_partitions()) or {}
    warnings = [f"topic {settings.topic_prefix}{short} has {n} partition(s) < SIFT_KAFKA_PARTITIONS="
                f"{settings.kafka_partitions}: at most {n} worker(s) of a kind share its work"
                for short, n in topics.items() if n < settings.kafka_partitions]
    if settings.spool_dir.exists():
        spool = _try(errors, "spool", lambda: Spool(settings.spool_dir))
        spool_events = len(spool) if spool is not None else None
    else:  # nothing was ever spooled on this host (opening a spool would create one)
        spool, spool_events = None, 0
    store = ObjectStore(settings)
    registry = Registry(settings)
    drift = Drift(settings, store, registry)
    rows = []
    for cfg in _try(errors, "classifiers", TenantStore(store).list) or []:
        row = ClassifierStatus(name=cfg.name, threshold=cfg.threshold)
        champion = _try(row.errors, "champion", lambda c=cfg: registry.champion(c.name))
        row.champion = champion.version if champion else None
        review = _try(row.errors, "review", lambda c=cfg: review_status(settings, c.name, store=store))
        if review is not None:
            row.backlog, row.pending_tasks, row.reviewed = review.backlog, review.pending_tasks, review.reviewed
        jobs = _try(row.errors, "retrain", lambda c=cfg: list_jobs(store, c.name, limit=1)) or []
        if jobs:
            job = jobs[0]
            row.last_retrain, row.last_retrain_reason = job.status, job.reason or None
        report = _try(row.errors, "drift", lambda c=cfg: drift.check(c.name, alert=False)) if row.champion else None
        if report is not None:
            row.drift = (f"label PSI {report.label_psi:.3f}, confidence PSI {report.confidence_psi:.3f}"
                         if report.label_psi is not None and report.confidence_psi is not None else report.status)
        rows.append(row)
    return PipelineStatus(
        processes=processes, lag=lag, topics=topics, warnings=warnings, classifiers=rows, errors=errors,
        spool_events=spool_events, spool_oldest_age_s=spool.oldest_age_s() if spool is not None else None,
    )


def render(status: PipelineStatus) -> str:
    """A terminal page: processes, Kafka lag, spool, then one line per classifier."""
    lines = ["PROCESSES"]
    lines += [f"  {name:<18} {state}" for name, state in status.processes.items()]
    lines.append("KAFKA LAG (records not yet committed)")
    for group, parts in status.lag.items():
        total = sum(parts.values())
        lines.append(f"  {group:<18} {total}" + (f"   {parts}" if total else ""))
    if status.topics:
        lines.append("TOPICS (partitions)  " + "  ".join(f"{t}={n}" for t, n in status.topics.items()))
    lines += [f"  ! {w}" for w in status.warnings]
    age = "" if status.spool_oldest_age_s is None else f", oldest {status.spool_oldest_age_s:.0f} s"
    lines.append(f"SPOOL  {status.spool_events if status.spool_events is not None else '?'} events{age}")
    lines.append("CLASSIFIERS")
    lines.append(f"  {'name':<16} {'champion':>8} {'thresh':>6} {'backlog':>7} {'pending':>7} {'reviewed':>8}  "
                 "last retrain")

    def cell(value: object) -> str:
        return "-" if value is None else str(value)

    for c in status.classifiers:
        thresh = "budget" if c.threshold is None else f"{c.threshold:.2f}"
        lines.append(f"  {c.name:<16} {cell(c.champion):>8} {thresh:>6} {cell(c.backlog):>7} "
                     f"{cell(c.pending_tasks):>7} {cell(c.reviewed):>8}  {cell(c.last_retrain)}")
        if c.last_retrain_reason:
            lines.append(f"      last retrain: {c.last_retrain_reason}")
        if c.drift:
            lines.append(f"      drift: {c.drift}")
        lines += [f"      ! {e}" for e in c.errors]
    lines += [f"! {e}" for e in status.errors]
    return "\n".join(lines)
