"""Model validation ("blessing"): may a challenger replace the champion?

Both are scored on the same fixed evaluation set in the same job (never against numbers stored
from an older, different set), and compared row by row (``retrain.gate``: a paired bootstrap with
a fixed seed). The rule, in order (the first that fails decides; knobs in ``RetrainPolicy``):

1. the candidate's macro-F1 gain over the champion is at least ``promotion_margin``;
2. the lower bound of the gain's ``gate_confidence`` interval is above ``-max_f1_loss``: the set
   must make it implausible that the candidate is more than that much worse;
3. no class with at least ``min_class_support`` evaluation texts loses recall significantly: a drop
   over ``recall_tolerance`` whose interval lies above 0. Smaller classes are noise at this size and
   only count through macro-F1.

The first model (no champion, or one that cannot be scored on this set) is compared the same way
with the majority-class baseline: blessed when it beats the baseline's macro-F1 by at least
``baseline_floor`` and the interval of that gain lies above 0. The verdict is always written, with
the numbers that decided it, as model version tags (next to the version in the MLflow UI) and as
JSON in the store.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from infra.objectstore import ObjectStore
from infra.registry import Registry
from infra.tenants import RetrainPolicy
from model.evaluate import EvalReport
from retrain import paths
from retrain.gate import GateNumbers, majority_rows, paired_bootstrap, paired_rows

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
    gate: GateNumbers | None = Field(default=None, description="the bootstrap numbers and the rule that decided")
    dataset_version: str = ""
    job_id: str = ""
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def _interval(g: GateNumbers) -> str:
    lo, hi = g.gain_interval
    return f"{g.confidence:.0%} interval [{lo:+.4f}, {hi:+.4f}]"


def judge(candidate: EvalReport, champion: EvalReport | None,
          policy: RetrainPolicy) -> tuple[bool, str, GateNumbers]:
    """(blessed, reason, numbers): the gate alone (module rules), with no side effects."""
    knobs = dict(resamples=policy.bootstrap_resamples, seed=policy.bootstrap_seed, confidence=policy.gate_confidence,
                 min_class_support=policy.min_class_support, recall_tolerance=policy.recall_tolerance)
    if champion is None:
        g = paired_bootstrap(*majority_rows(candidate), reference_name="majority_baseline", **knobs)
        what = (f"macro-F1 {g.candidate_macro_f1:.4f} vs the majority-class baseline {g.reference_macro_f1:.4f} "
                f"(gain {g.gain:+.4f}, {_interval(g)})")
        if g.gain + EPS < policy.baseline_floor:
            g.rule = "first model: gain over the majority-class baseline below baseline_floor"
            return False, f"first model: {what} is below the baseline floor {policy.baseline_floor:.4f}", g
        if g.gain_interval[0] <= 0:
            g.rule = "first model: the interval of the gain over the baseline reaches 0"
            return False, f"first model: {what}: not distinguishable from the baseline on this evaluation set", g
        g.rule = "first model: beats the majority-class baseline by baseline_floor, interval above 0"
        return True, f"first model: {what} >= floor {policy.baseline_floor:.4f}", g

    g = paired_bootstrap(*paired_rows(candidate, champion), reference_name="champion", **knobs)
    what = (f"macro-F1 gain {g.gain:+.4f} ({g.candidate_macro_f1:.4f} vs champion {g.reference_macro_f1:.4f}, "
            f"{_interval(g)})")
    if g.gain + EPS < policy.promotion_margin:
        g.rule = "gain below promotion_margin"
        return False, f"{what} is below the promotion margin {policy.promotion_margin:.4f}", g
    if g.gain_interval[0] < -policy.max_f1_loss - EPS:
        g.rule = "gain interval's lower bound below -max_f1_loss"
        return False, (f"{what}: the candidate may be more than {policy.max_f1_loss:.4f} worse than the champion "
                       "(too few evaluation texts to tell them apart)"), g
    regressions = {k: c for k, c in g.per_class.items() if c.significant}
    if regressions:
        g.rule = "significant recall drop on a class with min_class_support"
        worst = ", ".join(f"{k} -{c.drop:.4f} (support {c.support}, drop interval [{c.drop_interval[0]:+.4f}, "
                          f"{c.drop_interval[1]:+.4f}])"
                          for k, c in sorted(regressions.items(), key=lambda kv: -kv[1].drop))
        return False, f"{what}, but significant recall drops beyond {policy.recall_tolerance:.4f}: {worst}", g
    counted = sum(c.counted for c in g.per_class.values())
    g.rule = "promoted: gain >= promotion_margin, interval above -max_f1_loss, no significant class regression"
    return True, (f"{what} >= margin {policy.promotion_margin:.4f}, lower bound above -{policy.max_f1_loss:.4f}; "
                  f"no significant recall drop on the {counted} classes with >= {policy.min_class_support} "
                  "evaluation texts"), g


def bless(classifier: str, candidate_version: str, report: EvalReport, champion_version: str | None,
          champion_report: EvalReport | None, policy: RetrainPolicy, **extra: object) -> Verdict:
    """The verdict of one candidate (``extra``: candidate name, selected, dataset_version, job_id)."""
    blessed, reason, g = judge(report, champion_report, policy)
    if champion_report is None and champion_version is not None:  # "first model" would be misleading
        reason = (f"champion v{champion_version} cannot be scored on this evaluation set (its label set differs): "
                  f"judged against the majority-class baseline instead; {reason}")
    return Verdict(
        classifier=classifier, candidate_version=candidate_version, champion_version=champion_version,
        blessed=blessed, reason=reason, candidate_macro_f1=report.macro_f1,
        champion_macro_f1=champion_report.macro_f1 if champion_report else None,
        gain=(report.macro_f1 - champion_report.macro_f1) if champion_report else None,
        margin=policy.promotion_margin, recall_tolerance=policy.recall_tolerance,
        recall_drops={k: c.drop for k, c in g.per_class.items()} if champion_report else {}, gate=g,
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
    if verdict.gate is not None:
        lo, hi = verdict.gate.gain_interval
        tags["sift.bless_gain_interval"] = f"[{lo:+.6f}, {hi:+.6f}] vs {verdict.gate.reference}"
        tags["sift.bless_rule"] = verdict.gate.rule
    for key, value in tags.items():
        registry.set_version_tag(verdict.classifier, verdict.candidate_version, key, value)
    store.put_json(paths.verdict(verdict.classifier, verdict.candidate_version), verdict.model_dump(mode="json"))


def load_verdict(store: ObjectStore, classifier: str, version: str) -> Verdict | None:
    data = store.get_json(paths.verdict(classifier, version))
    return None if data is None else Verdict.model_validate(data)
