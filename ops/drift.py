"""Drift: are the champion's live predictions still distributed like on its evaluation set?

The reference is computed when a version is trained (``model.evaluate.PredictionReference``: the
share of each predicted label and a confidence histogram on the evaluation set) and logged in the
version's MLflow run at ``REFERENCE_ARTIFACT``. The live side is read from the stored prediction
segments of the last ``window_hours`` (every replica writes them, so the picture covers all
replicas without shared counters), keeping only the champion's own records: a new champion starts
a new comparison. The score is the population stability index (PSI) over labels and over the
confidence bins; above ``alert_psi`` the pass alerts (log, counter, the classifier's
``alert_webhook_url``). Rules of thumb: PSI < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Literal

from prometheus_client import Counter, Gauge
from pydantic import BaseModel, Field

from infra.alerts import Alert, send_alert
from infra.objectstore import ObjectStore
from infra.predictions import PredictionRecord
from infra.registry import Registry
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from model.evaluate import REFERENCE_ARTIFACT, PredictionReference, prediction_reference

log = logging.getLogger("sift.ops.drift")

PSI = Gauge("sift_drift_psi", "PSI of the champion's recent predictions against its evaluation reference",
            ["classifier", "kind"])
ALERTS = Counter("sift_drift_alerts_total", "Drift alerts raised", ["classifier", "kind"])
EPS = 1e-4  # floor for empty bins: PSI is infinite otherwise
MAX_SEGMENTS = 2_000  # newest segments read per check: bounds a check's cost at high volume

Status = Literal["ok", "drift", "no champion", "no reference", "too few predictions"]


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index of two distributions over the same bins."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, EPS), max(a, EPS)
        total += (a - e) * math.log(a / e)
    return total


class DriftReport(BaseModel):
    classifier: str
    status: Status
    champion_version: str | None = None
    window_start: datetime
    window_end: datetime
    predictions: int = 0
    label_psi: float | None = None
    confidence_psi: float | None = None
    alert_psi: float
    alerted: bool = False
    reference: PredictionReference | None = None
    current: PredictionReference | None = None
    segments_read: int = Field(default=0, description="prediction segments read in the window")


class Drift:
    def __init__(self, settings: Settings, store: ObjectStore, registry: Registry | None = None) -> None:
        self.settings = settings
        self.store = store
        self.tenants = TenantStore(store)
        self.registry = registry if registry is not None else Registry(settings)  # every pass reads it

    def reference(self, classifier: str, run_id: str | None) -> PredictionReference | None:
        """The reference logged with a version's training run (None for versions trained without one)."""
        data = self.registry.load_dict(run_id, REFERENCE_ARTIFACT) if run_id else None
        if data is None:
            return None
        return PredictionReference.model_validate(data)

    def recent(self, classifier: str, version: str, start: datetime, end: datetime,
               max_segments: int = MAX_SEGMENTS) -> tuple[list[PredictionRecord], int]:
        """The champion's stored predictions created in [start, end), newest segments first."""
        keys = sorted(((o.modified, o.key) for o in self.store.list_objects("predictions/")
                       if o.modified is not None and o.modified >= start), reverse=True)
        records, read = [], 0
        for _, key in keys[:max_segments]:
            rows = self.store.get_json(key) or []
            read += 1
            for row in rows:
                if not row or row.get("classifier") != classifier or row.get("model_version") != version:
                    continue
                rec = PredictionRecord.model_validate(row)
                if start <= rec.created_at < end:
                    records.append(rec)
        return records, read

    def check(self, classifier: str, now: datetime | None = None, *, alert: bool = True) -> DriftReport:
        """Score one classifier; sets ``sift_drift_psi`` and alerts beyond its ``drift.alert_psi``."""
        cfg = self.tenants.require(classifier)
        end = now or datetime.now(UTC)
        start = end - timedelta(hours=cfg.drift.window_hours)
        report = DriftReport(classifier=classifier, status="no champion", window_start=start, window_end=end,
                             alert_psi=cfg.drift.alert_psi)
        champion = self.registry.champion(classifier)
        if champion is None:
            return report
        report.champion_version = champion.version
        report.reference = self.reference(classifier, champion.run_id)
        if report.reference is None:
            report.status = "no reference"
            return report
        records, report.segments_read = self.recent(classifier, champion.version, start, end)
        report.predictions = len(records)
        report.current = prediction_reference(cfg.labels, [r.label for r in records],
                                              [r.confidence for r in records])
        if len(records) < cfg.drift.min_predictions:
            report.status = "too few predictions"
            return report
        ref, cur = report.reference, report.current
        report.label_psi = psi([ref.label_share.get(k, 0.0) for k in cfg.labels],
                               [cur.label_share.get(k, 0.0) for k in cfg.labels])
        report.confidence_psi = psi(ref.confidence_share, cur.confidence_share)
        PSI.labels(classifier, "label").set(report.label_psi)
        PSI.labels(classifier, "confidence").set(report.confidence_psi)
        over = {k: v for k, v in (("label", report.label_psi), ("confidence", report.confidence_psi))
                if v > cfg.drift.alert_psi}
        report.status = "drift" if over else "ok"
        if over and alert:
            report.alerted = self._alert(cfg, report, over)
        return report

    def _alert(self, cfg: ClassifierConfig, report: DriftReport, over: dict[str, float]) -> bool:
        for kind in over:
            ALERTS.labels(cfg.name, kind).inc()
        message = ", ".join(f"{k} PSI {v:.3f}" for k, v in over.items())
        log.error("drift alert for %s v%s: %s > %.3f over %d predictions", cfg.name, report.champion_version,
                  message, cfg.drift.alert_psi, report.predictions)
        return send_alert(Alert(
            kind="drift", classifier=cfg.name, source="sift-drift", message=f"{message} above {cfg.drift.alert_psi}",
            details={"champion_version": report.champion_version, "predictions": report.predictions,
                     "label_psi": report.label_psi, "confidence_psi": report.confidence_psi,
                     "window_start": report.window_start.isoformat(),
                     "window_end": report.window_end.isoformat()},
        ), classifier_url=cfg.retrain.alert_webhook_url, operator_url=self.settings.alert_webhook_url)

    def check_all(self, now: datetime | None = None) -> list[DriftReport]:
        out = []
        for cfg in self.tenants.list():
            try:
                out.append(self.check(cfg.name, now))
            except Exception:
                log.exception("drift check of %s failed", cfg.name)
        return out
