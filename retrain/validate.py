"""Data validation before training, TFX style: a failing check stops the job with a report.

Errors stop the job (training on them would produce a model that cannot be trusted or compared);
warnings are recorded and the job goes on. Each check names what it found, with a few examples,
because the report is what an operator reads to fix the data.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from infra.tenants import RetrainPolicy
from infra.texts import normalize
from retrain.assemble import AssembledDataset

Severity = Literal["error", "warning"]
MAX_EXAMPLES = 5


class Check(BaseModel):
    name: str
    severity: Severity
    passed: bool
    message: str
    examples: list[str] = Field(default_factory=list)


class ValidationReport(BaseModel):
    classifier: str
    dataset_version: str
    ok: bool
    checks: list[Check]
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def errors(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.severity == "error"]

    def summary(self) -> str:
        failed = [c for c in self.checks if not c.passed]
        if not failed:
            return "all checks passed"
        return "; ".join(f"{c.severity} {c.name}: {c.message}" for c in failed)


def _check(name: str, severity: Severity, bad: list[str], ok_msg: str, bad_msg: str) -> Check:
    return Check(name=name, severity=severity, passed=not bad, message=bad_msg if bad else ok_msg,
                 examples=bad[:MAX_EXAMPLES])


def validate(ds: AssembledDataset, labels: list[str], policy: RetrainPolicy) -> ValidationReport:
    """Run every check on an assembled dataset; ``ok`` is False when any error-level check fails."""
    rows = [*ds.train, *ds.eval]
    known = set(labels)
    checks: list[Check] = []

    unknown = Counter(r.label for r in rows if r.label not in known)
    checks.append(_check(
        "unknown_labels", "error", [f"{lb!r} x{n}" for lb, n in unknown.most_common()],
        "every label is one of the classifier's",
        f"{sum(unknown.values())} rows carry labels outside {labels}: {dict(unknown)}",
    ))

    empty = [repr(r.text) for r in rows if not r.text.strip()]
    checks.append(_check("empty_texts", "error", empty, "no empty texts", f"{len(empty)} empty texts"))

    # a warning: assemble already keeps these texts out of training and evaluation, and one mislabeled
    # seed row must not stop every retrain until somebody reviews it
    checks.append(_check(
        "conflicting_labels", "warning", [f"{c.text[:80]!r}: {c.labels}" for c in ds.conflicts],
        "no text carries two labels",
        f"{len(ds.conflicts)} seed texts carry more than one label; they are left out of training and "
        "evaluation until a review of the text settles it",
    ))

    by_norm: dict[str, set[str]] = defaultdict(set)
    count_norm: Counter[str] = Counter()
    for r in ds.train:
        by_norm[normalize(r.text)].add(r.label)
        count_norm[normalize(r.text)] += 1
    dup = [t[:80] for t, n in count_norm.items() if n > 1]
    near_conflicts = [f"{t[:80]!r}: {sorted(ls)}" for t, ls in by_norm.items() if len(ls) > 1]
    checks.append(_check(
        "duplicate_texts", "warning", dup, "no duplicate texts in training",
        f"{len(dup)} texts appear more than once in training (case/whitespace differences only)",
    ))
    checks.append(_check(
        "near_duplicate_conflicts", "error", near_conflicts, "near-duplicate texts agree on their label",
        f"{len(near_conflicts)} texts differ only in case/whitespace but carry different labels",
    ))

    train_counts = Counter(r.label for r in ds.train)
    need = policy.min_examples_per_label
    few = [f"{lb}: {train_counts.get(lb, 0)}" for lb in labels if train_counts.get(lb, 0) < need]
    checks.append(_check(
        "too_few_examples", "error", few,
        f"every label has at least {policy.min_examples_per_label} training examples",
        f"labels under {policy.min_examples_per_label} training examples: {', '.join(few)}",
    ))

    train_norm = {normalize(r.text) for r in ds.train}
    leaked = [r.text[:80] for r in ds.eval if normalize(r.text) in train_norm]
    checks.append(_check(
        "train_eval_leakage", "error", leaked, "no evaluation text is in training",
        f"{len(leaked)} evaluation texts also appear in training",
    ))

    checks.append(_check(
        "eval_set_size", "error", [] if ds.eval else ["0 rows"], f"{len(ds.eval)} evaluation rows",
        "the evaluation set is empty: models cannot be compared",
    ))
    eval_counts = Counter(r.label for r in ds.eval)
    missing = [lb for lb in labels if not eval_counts.get(lb)]
    checks.append(_check(
        "eval_label_coverage", "warning", missing, "every label is in the evaluation set",
        f"labels without evaluation rows (their recall cannot be compared): {', '.join(missing)}",
    ))

    ok = not any(not c.passed and c.severity == "error" for c in checks)
    return ValidationReport(classifier=ds.version.classifier, dataset_version=ds.version.version_id, ok=ok,
                            checks=checks)
