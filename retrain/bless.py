"""Model validation ("blessing"): may a challenger replace the champion?

Both are scored on the same fixed evaluation set in the same job (never against numbers stored
from an older, different set). A challenger is blessed when its macro-F1 gain over the champion
is at least ``promotion_margin`` and no class's recall drops by more than ``recall_tolerance``.
The verdict is always written — blessed or not, and on the first run with no champion — as
model version tags (visible in the MLflow UI next to the version) and as JSON in the store.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from infra.objectstore import ObjectStore
from infra.registry import Registry
from infra.tenants import RetrainPolicy
from model.evaluate import EvalReport
from retrain import paths

EPS = 1e-9


class Verdict(BaseModel):
    classifier: str
    candidate_version: str
    candidate: str = ""
    champion_version: str | None
    blessed: bool
    selected: bool = True
    reason: str
    candidate_macro_f1: float
    champion_macro_f1: float | None
    gain: float | None
    margin: float
    recall_tolerance: float
    recall_drops: dict[str, float] = Field(default_factory=dict, description="champion minus candidate, per label")
    dataset_version: str = ""
    job_id: str = ""
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def judge(candidate: EvalReport, champion: EvalReport | None, policy: RetrainPolicy) -> tuple[bool, str, dict]:
    """(blessed, reason, recall drops) — the gate alone, with no side effects."""
    if champion is None:
        return True, "no champion yet: the first candidate that passes validation is blessed", {}
    gain = candidate.macro_f1 - champion.macro_f1
    drops = {
        label: round(champion.per_class[label].recall - s.recall, 6)
        for label, s in candidate.per_class.items()
        if label in champion.per_class and champion.per_class[label].support > 0
    }
    too_big = {k: v for k, v in drops.items() if v > policy.recall_tolerance + EPS}
    if gain + EPS < policy.promotion_margin:
        return False, (f"macro-F1 gain {gain:+.4f} ({candidate.macro_f1:.4f} vs champion {champion.macro_f1:.4f}) "
                       f"is below the promotion margin {policy.promotion_margin:.4f}"), drops
    if too_big:
        worst = ", ".join(f"{k} -{v:.4f}" for k, v in sorted(too_big.items(), key=lambda kv: -kv[1]))
        return False, f"recall drops beyond the tolerance {policy.recall_tolerance:.4f}: {worst}", drops
    return True, (f"macro-F1 {candidate.macro_f1:.4f} vs champion {champion.macro_f1:.4f} (gain {gain:+.4f} >= "
                  f"margin {policy.promotion_margin:.4f}); no recall drop beyond {policy.recall_tolerance:.4f}"), drops


def bless(classifier: str, candidate_version: str, report: EvalReport, champion_version: str | None,
          champion_report: EvalReport | None, policy: RetrainPolicy, **extra: object) -> Verdict:
    """The verdict of one candidate (``extra``: candidate name, selected, dataset_version, job_id)."""
    blessed, reason, drops = judge(report, champion_report, policy)
    if champion_report is None and champion_version is not None:  # "no champion yet" would be false here
        reason = (f"champion v{champion_version} cannot be scored on this evaluation set (its label set differs): "
                  "the candidate is judged by validation alone")
    return Verdict(
        classifier=classifier, candidate_version=candidate_version, champion_version=champion_version,
        blessed=blessed, reason=reason, candidate_macro_f1=report.macro_f1,
        champion_macro_f1=champion_report.macro_f1 if champion_report else None,
        gain=(report.macro_f1 - champion_report.macro_f1) if champion_report else None,
        margin=policy.promotion_margin, recall_tolerance=policy.recall_tolerance, recall_drops=drops,
        **extra,  # type: ignore[arg-type]
    )


def record_verdict(registry: Registry, store: ObjectStore, verdict: Verdict) -> None:
    """Write the verdict as version tags and as ``models/<c>/verdicts/<version>.json``."""
    tags = {
        "sift.blessed": str(verdict.blessed).lower(),
        "sift.selected": str(verdict.selected).lower(),
        "sift.bless_reason": verdict.reason[:4000],
        "sift.bless_champion_version": verdict.champion_version or "none",
        "sift.bless_macro_f1": f"{verdict.candidate_macro_f1:.6f}",
        "sift.bless_gain": "none" if verdict.gain is None else f"{verdict.gain:+.6f}",
        "sift.eval_dataset_version": verdict.dataset_version,
    }
    for key, value in tags.items():
        registry.set_version_tag(verdict.classifier, verdict.candidate_version, key, value)
    store.put_json(paths.verdict(verdict.classifier, verdict.candidate_version), verdict.model_dump(mode="json"))


def load_verdict(store: ObjectStore, classifier: str, version: str) -> Verdict | None:
    data = store.get_json(paths.verdict(classifier, version))
    return None if data is None else Verdict.model_validate(data)
