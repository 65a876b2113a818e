"""When a classifier retrains: N new reviewed labels, a schedule, or on demand.

Two small objects in the store, each with one writer, so neither can overwrite the other:
``retrain/<c>/trigger.json`` (the worker's consumer: running total of reviewed labels seen, recent
event ids for dedupe) and ``retrain/<c>/last-job.json`` (the job: the total it started from, written
when it reaches a verdict); the last schedule check has its own ``retrain/<c>/schedule.json``. New
labels since the last job = total - total at the last job's start, which survives restarts of the
worker and jobs started elsewhere (API, CLI). A job that fails writes nothing, so its labels keep
the trigger armed and the next job takes them.

Schedules are 'daily' (00:00 UTC), 'weekly' (Sunday 00:00 UTC) or a 5-field cron expression
(minute hour day-of-month month day-of-week; ``*``, lists, ranges, steps; UTC), matched by the
tiny matcher below — no dependency needed for that.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from infra.events import ReviewedLabel
from infra.objectstore import ObjectStore
from retrain import paths

RECENT_IDS = 5000
ALIASES = {"daily": "0 0 * * *", "weekly": "0 0 * * 0", "hourly": "0 * * * *"}
_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]


class CronError(ValueError):
    """An invalid schedule; the message is user-facing."""


def _field(spec: str, lo: int, hi: int, dow: bool) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        step = 1
        if "/" in part:
            part, step_s = part.split("/", 1)
            if not step_s.isdigit() or int(step_s) < 1:
                raise CronError(f"bad step in {spec!r}")
            step = int(step_s)
        if part == "*":
            a, b = lo, hi
        elif "-" in part:
            a_s, b_s = part.split("-", 1)
            if not (a_s.isdigit() and b_s.isdigit()):
                raise CronError(f"bad range in {spec!r}")
            a, b = int(a_s), int(b_s)
        elif part.isdigit():
            a = int(part)
            b = hi if step > 1 else a
        else:
            raise CronError(f"bad value {part!r} in {spec!r}")
        top = 7 if dow else hi
        if a < lo or b > top or a > b:
            raise CronError(f"{spec!r} is outside {lo}-{top}")
        out.update((v % 7 if dow else v) for v in range(a, b + 1, step))
    return out


class Cron(BaseModel):
    expr: str
    minutes: set[int]
    hours: set[int]
    days: set[int]
    months: set[int]
    weekdays: set[int]  # 0 = Sunday
    dom_any: bool
    dow_any: bool

    @classmethod
    def parse(cls, schedule: str) -> Cron:
        expr = ALIASES.get(schedule.strip().lower(), schedule.strip())
        parts = expr.split()
        if len(parts) != 5:
            raise CronError(f"schedule {schedule!r}: use 'daily', 'weekly' or 5 cron fields")
        sets = [_field(p, lo, hi, i == 4) for i, (p, (lo, hi)) in enumerate(zip(parts, _RANGES, strict=True))]
        return cls(expr=expr, minutes=sets[0], hours=sets[1], days=sets[2], months=sets[3], weekdays=sets[4],
                   dom_any=parts[2] == "*", dow_any=parts[4] == "*")

    def matches(self, t: datetime) -> bool:
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        dom, dow = t.day in self.days, (t.isoweekday() % 7) in self.weekdays
        if self.dom_any or self.dow_any:  # cron: when both are restricted, either may match
            return dom and dow
        return dom or dow


def schedule_due(schedule: str, since: datetime | None, now: datetime) -> bool:
    """Whether a minute matching ``schedule`` lies in (since, now]; looks back at most 8 days."""
    if since is None:
        return False
    cron = Cron.parse(schedule)
    t = max(since, now - timedelta(days=8)).astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    end = now.astimezone(UTC)
    while t <= end:
        if cron.matches(t):
            return True
        t += timedelta(minutes=1)
    return False


class TriggerState(BaseModel):
    classifier: str
    labels_total: int = 0
    recent_ids: list[str] = Field(default_factory=list)


class LastJob(BaseModel):
    classifier: str
    job_id: str = ""
    labels_total_at_start: int = 0
    done_at: datetime | None = None
    trigger: str = ""


class Triggers:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def state(self, classifier: str) -> TriggerState:
        data = self.store.get_json(paths.trigger_state(classifier))
        return TriggerState(classifier=classifier) if data is None else TriggerState.model_validate(data)

    def _save(self, state: TriggerState) -> None:
        state.recent_ids = state.recent_ids[-RECENT_IDS:]
        self.store.put_json(paths.trigger_state(state.classifier), state.model_dump(mode="json"))

    def last_job(self, classifier: str) -> LastJob:
        data = self.store.get_json(paths.trigger_state(classifier).replace("trigger.json", "last-job.json"))
        return LastJob(classifier=classifier) if data is None else LastJob.model_validate(data)

    def record(self, event: ReviewedLabel) -> int:
        """Count one reviewed label (duplicates and skips are not counted); returns the new-label count."""
        state = self.state(event.classifier)
        if event.event_id not in state.recent_ids and not event.skipped and event.label is not None:
            state.labels_total += 1
            state.recent_ids.append(event.event_id)
            self._save(state)
        return state.labels_total - self.last_job(event.classifier).labels_total_at_start

    def new_labels(self, classifier: str) -> int:
        return max(0, self.state(classifier).labels_total - self.last_job(classifier).labels_total_at_start)

    def job_done(self, classifier: str, job_id: str, trigger: str, labels_total_at_start: int) -> None:
        """Called by a job that reached a verdict: the labels counted when it started are now used."""
        last = LastJob(classifier=classifier, job_id=job_id, labels_total_at_start=labels_total_at_start,
                       done_at=datetime.now(UTC), trigger=trigger)
        self.store.put_json(paths.trigger_state(classifier).replace("trigger.json", "last-job.json"),
                            last.model_dump(mode="json"))

    def check_schedule(self, classifier: str, schedule: str | None, now: datetime | None = None) -> bool:
        """Whether the schedule fired since the last check; the check time is stored (catch-up after a restart)."""
        now = now or datetime.now(UTC)
        key = paths.trigger_state(classifier).replace("trigger.json", "schedule.json")
        checked = (self.store.get_json(key) or {}).get("checked_at")
        since = datetime.fromisoformat(checked) if checked else None
        due = bool(schedule) and schedule_due(schedule or "", since, now)
        self.store.put_json(key, {"checked_at": now.isoformat(), "schedule": schedule})
        return due
