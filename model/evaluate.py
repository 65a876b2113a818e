"""Score a model on labeled rows: the numbers every promotion decision and report is built from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from model.calibration import expected_calibration_error
from model.data import LabeledText
from model.runtime import LoadedModel


class ClassScores(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


REFERENCE_ARTIFACT = "reference/prediction-reference.json"  # in the MLflow run of each version
CONFIDENCE_BINS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0000001)


class PredictionReference(BaseModel):
    """What the model predicts on its evaluation set: the baseline drift monitoring compares with."""

    n: int
    label_share: dict[str, float]
    confidence_bins: list[float] = list(CONFIDENCE_BINS)
    confidence_share: list[float]  # share of predictions per [bins[i], bins[i+1]) interval


def prediction_reference(labels: list[str], predicted: list[str], confidence: list[float]) -> PredictionReference:
    """Label shares and confidence histogram of a list of predictions (the same code for both sides of drift)."""
    n = len(predicted)
    counts = {label: 0 for label in labels}
    for label in predicted:
        counts[label] = counts.get(label, 0) + 1
    hist, _ = np.histogram(np.clip(np.asarray(confidence, float), 0, 1), bins=np.asarray(CONFIDENCE_BINS))
    return PredictionReference(
        n=n, label_share={k: (v / n if n else 0.0) for k, v in counts.items()},
        confidence_share=[(float(h) / n if n else 0.0) for h in hist],
    )


class EvalReport(BaseModel):
    labels: list[str]
    n: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    confusion: list[list[int]]  # rows: true label, columns: predicted label, in ``labels`` order
    model_version: str = ""
    reference: PredictionReference | None = None
    ece: float | None = None  # expected calibration error of the probabilities as served (model/calibration.py)
    # per row, indices into ``labels``: what a paired comparison of two models on the same rows needs
    # (retrain's promotion gate); kept out of dumps, which stay a summary
    y_true: list[int] = Field(default_factory=list, exclude=True)
    y_pred: list[int] = Field(default_factory=list, exclude=True)

    def flat_metrics(self, prefix: str = "") -> dict[str, float]:
        """Scalar metrics for MLflow: accuracy, macro_f1, and f1/recall per label."""
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}macro_f1": self.macro_f1}
        for label, s in self.per_class.items():
            out[f"{prefix}f1.{label}"] = s.f1
            out[f"{prefix}recall.{label}"] = s.recall
        return out


def scores_from_predictions(labels: list[str], y_true: list[int], y_pred: list[int],
                            model_version: str = "") -> EvalReport:
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    k = len(labels)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(k)), zero_division=0)
    # macro over labels seen in truth or predictions: an absent class must not count as f1 = 0
    macro = float(f1_score(y_true, y_pred, average="macro", zero_division=0)) if y_true else 0.0
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k))) if y_true else np.zeros((k, k), int)
    return EvalReport(
        labels=labels,
        n=len(y_true),
        accuracy=float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if y_true else 0.0,
        macro_f1=macro,
        per_class={
            label: ClassScores(precision=float(p[i]), recall=float(r[i]), f1=float(f[i]), support=int(s[i]))
            for i, label in enumerate(labels)
        },
        confusion=cm.astype(int).tolist(),
        model_version=model_version,
        y_true=[int(x) for x in y_true],
        y_pred=[int(x) for x in y_pred],
    )


def evaluate(model: LoadedModel | str | Path, rows: list[LabeledText], **load_kwargs: Any) -> EvalReport:
    """Accuracy, macro-F1, per-class scores and the confusion matrix of ``model`` on ``rows``."""
    if not isinstance(model, LoadedModel):
        model = LoadedModel.load(model, **load_kwargs)
    index = {label: i for i, label in enumerate(model.labels)}
    unknown = sorted({r.label for r in rows} - set(index))
    if unknown:
        raise ValueError(f"evaluation rows have labels the model does not know: {unknown}")
    probs = model.predict_proba([r.text for r in rows])
    y_pred = probs.argmax(axis=1).tolist() if len(rows) else []
    report = scores_from_predictions(model.labels, [index[r.label] for r in rows], y_pred, model.version)
    report.ece = expected_calibration_error(probs, np.asarray(report.y_true)) if len(rows) else None
    report.reference = prediction_reference(model.labels, [model.labels[i] for i in y_pred],
                                            probs.max(axis=1).tolist() if len(rows) else [])
    return report
