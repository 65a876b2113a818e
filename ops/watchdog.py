"""The watchdog pass of ``sift worker gc``: alerts for what no failing process can report itself.

- **Dead-letter growth**: new open dead letters of a classifier since the last alert (the
  publisher or worker that wrote them has moved on; somebody has to act on them).
- **Stuck retrain**: a job still ``running`` after ``SIFT_RETRAIN_STUCK_AFTER_SECONDS`` — a hung
  worker, or one killed mid-job whose record can never finish.

What was already alerted is kept in the object store (``ops/alerts/<classifier>.json``), so a
restarted or second gc worker does not repeat an alert. The retrain stage's job records are read
through a callable the composition root passes in: ops never imports a stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from infra.alerts import Alert, send_alert
from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from ops.deadletters import DeadLetterEntry, DeadLetters

log = logging.getLogger("sift.ops.watchdog")


class RunningJob(BaseModel):
    job_id: str
    started_at: datetime


RunningJobs = Callable[[str], list[RunningJob]]


class AlertState(BaseModel):
    """What the watchdog already told about one classifier."""

    dead_letter_ids: list[str] = Field(default_factory=list, description="open dead letters already alerted")
    stuck_jobs: list[str] = Field(default_factory=list, description="job ids already reported stuck")


def state_key(classifier: str) -> str:
    return f"ops/alerts/{classifier}.json"


class Watchdog:
    def __init__(self, settings: Settings, store: ObjectStore, *, running_jobs: RunningJobs | None = None,
                 dead_letters: DeadLetters | None = None) -> None:
        self.settings = settings
        self.store = store
        self.tenants = TenantStore(store)
        self.running_jobs = running_jobs
        self.dead_letters = dead_letters or DeadLetters(settings, store)

    def check_all(self, now: datetime | None = None) -> list[Alert]:
        """One pass over every classifier; returns the alerts raised."""
        now = now or datetime.now(UTC)
        try:
            open_letters: list[DeadLetterEntry] | None = self.dead_letters.entries()
        except Exception:
            log.exception("could not read the dead-letter topic")
            open_letters = None
        raised: list[Alert] = []
        for cfg in self.tenants.list():
            mine = None if open_letters is None else [e for e in open_letters if e.classifier == cfg.name]
            try:
                raised += self.check(cfg, mine, now)
            except Exception:
                log.exception("watchdog check of %s failed", cfg.name)
        return raised

    def check(self, cfg: ClassifierConfig, open_letters: list[DeadLetterEntry] | None,
              now: datetime) -> list[Alert]:
        """``open_letters`` None: the topic could not be read, so what was already told stays as it is."""
        stored = AlertState.model_validate(self.store.get_json(state_key(cfg.name)) or {})
        state = stored.model_copy(deep=True)
        raised: list[Alert] = []
        letters = open_letters if open_letters is not None else []
        told = set(state.dead_letter_ids)
        new = [e for e in letters if e.id not in told]
        if new:
            reasons = sorted({e.reason for e in new})
            raised.append(Alert(
                kind="dead_letters", classifier=cfg.name, source="sift-ops",
                message=f"{len(new)} new dead letter(s) ({', '.join(reasons)}), {len(letters)} open; "
                        f"see `sift dlq list --classifier {cfg.name}`",
                details={"new": len(new), "open": len(letters), "reasons": reasons,
                         "topics": sorted({e.original_topic for e in new}), "ids": [e.id for e in new][:20]}))
        if open_letters is not None:  # only open ones are remembered: a replayed or purged letter leaves with it
            state.dead_letter_ids = [e.id for e in open_letters]
        for job in self.running_jobs(cfg.name) if self.running_jobs else []:
            running_s = (now - job.started_at).total_seconds()
            if running_s > self.settings.retrain_stuck_after_seconds and job.job_id not in state.stuck_jobs:
                raised.append(Alert(
                    kind="retrain_stuck", classifier=cfg.name, source="sift-ops",
                    message=f"retrain job {job.job_id} has been running for {running_s / 60:.0f} min "
                            f"(limit {self.settings.retrain_stuck_after_seconds / 60:.0f} min)",
                    details={"job_id": job.job_id, "started_at": job.started_at.isoformat(),
                             "running_s": round(running_s)}))
                state.stuck_jobs.append(job.job_id)
        state.stuck_jobs = state.stuck_jobs[-50:]
        for alert in raised:
            send_alert(alert, classifier_url=cfg.retrain.alert_webhook_url,
                       operator_url=self.settings.alert_webhook_url)
        if state != stored:  # a quiet pass writes nothing
            self.store.put_json(state_key(cfg.name), state.model_dump(mode="json"))
        return raised
