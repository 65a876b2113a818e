"""The promotion gate's statistics: paired bootstrap of two models' predictions on the same rows.

Why a bootstrap: the evaluation set of a young classifier has a handful of texts per class, where
one text moves a class's recall by 20 points. Comparing point estimates refused real gains
(0.444 vs 0.297 macro-F1, refused for a -0.20 recall "drop" on 5 texts). Resampling the rows
(the same resampled rows for both models: paired) measures how much of a difference the set can
tell apart. Pure numpy, no I/O: ``retrain.bless`` applies the rule and writes the verdict.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel

from model.evaluate import EvalReport

ROWS_PER_BLOCK = 2_000_000  # resampled rows held in memory at once (x3 int64 arrays)


class ClassGate(BaseModel):
    """One class's recall, champion (or baseline) against candidate, on the evaluation set."""

    support: int
    reference_recall: float
    candidate_recall: float
    drop: float  # reference minus candidate
    drop_interval: tuple[float, float]
    counted: bool  # enough support for its recall to count (``min_class_support``)
    significant: bool  # counted, over the tolerance, and the interval's lower bound above 0


class GateNumbers(BaseModel):
    """The numbers a verdict was decided on (recorded with it)."""

    reference: str  # "champion" or "majority_baseline"
    n: int
    resamples: int
    seed: int
    confidence: float
    candidate_macro_f1: float
    reference_macro_f1: float
    gain: float  # candidate minus reference, on the whole set
    gain_interval: tuple[float, float]
    per_class: dict[str, ClassGate]
    rule: str = ""  # the rule that decided, filled by ``retrain.bless.judge``


def _scores(truth: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(macro-F1 per resample, recall per resample and class) of (B, n) label indices.

    Macro over the classes present in truth or predictions, like ``scores_from_predictions``; a
    class absent from a resample's truth has recall NaN there."""
    b = truth.shape[0]
    flat_t = (truth + (np.arange(b) * k)[:, None]).ravel()
    flat_p = (pred + (np.arange(b) * k)[:, None]).ravel()
    hit = (truth == pred).ravel()
    tp = np.bincount(flat_t[hit], minlength=b * k).reshape(b, k)
    true_n = np.bincount(flat_t, minlength=b * k).reshape(b, k)
    pred_n = np.bincount(flat_p, minlength=b * k).reshape(b, k)
    denom = true_n + pred_n
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    macro = f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    recall = np.where(true_n > 0, tp / np.maximum(true_n, 1), np.nan)
    return macro, recall


def paired_bootstrap(labels: list[str], truth: list[int], candidate: list[int], reference: list[int], *,
                     resamples: int, seed: int, confidence: float, min_class_support: int,
                     recall_tolerance: float, reference_name: str) -> GateNumbers:
    """Gain of ``candidate`` over ``reference`` (label indices per row, same rows) with its interval,
    and per-class recall drops with theirs, from ``resamples`` paired resamples of the rows."""
    t, c, r = (np.asarray(x, dtype=np.int64) for x in (truth, candidate, reference))
    n, k = len(t), len(labels)
    if n == 0:
        raise ValueError("no evaluation rows: two models cannot be compared")
    c_macro, c_recall = _scores(t[None], c[None], k)
    r_macro, r_recall = _scores(t[None], r[None], k)
    rng = np.random.default_rng(seed)
    gains: list[np.ndarray] = []
    drops: list[np.ndarray] = []
    block = max(1, ROWS_PER_BLOCK // n)
    for start in range(0, resamples, block):
        idx = rng.integers(0, n, size=(min(block, resamples - start), n))
        cm, cr = _scores(t[idx], c[idx], k)
        rm, rr = _scores(t[idx], r[idx], k)
        gains.append(cm - rm)
        drops.append(rr - cr)
    gain_s, drop_s = np.concatenate(gains), np.concatenate(drops)
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    support = np.bincount(t, minlength=k)
    per_class: dict[str, ClassGate] = {}
    for i, label in enumerate(labels):
        if support[i] == 0:
            continue
        column = drop_s[:, i][~np.isnan(drop_s[:, i])]
        lo, hi = (float(x) for x in np.quantile(column, [lo_q, hi_q])) if len(column) else (math.nan, math.nan)
        drop = float(r_recall[0, i] - c_recall[0, i])
        counted = bool(support[i] >= min_class_support)
        per_class[label] = ClassGate(
            support=int(support[i]), reference_recall=round(float(r_recall[0, i]), 6),
            candidate_recall=round(float(c_recall[0, i]), 6), drop=round(drop, 6),
            drop_interval=(round(lo, 6), round(hi, 6)), counted=counted,
            significant=counted and drop > recall_tolerance + 1e-9 and lo > 0)
    g_lo, g_hi = (float(x) for x in np.quantile(gain_s, [lo_q, hi_q]))
    return GateNumbers(
        reference=reference_name, n=n, resamples=resamples, seed=seed, confidence=confidence,
        candidate_macro_f1=round(float(c_macro[0]), 6), reference_macro_f1=round(float(r_macro[0]), 6),
        gain=round(float(c_macro[0] - r_macro[0]), 6), gain_interval=(round(g_lo, 6), round(g_hi, 6)),
        per_class=per_class)


def paired_rows(candidate: EvalReport, reference: EvalReport) -> tuple[list[str], list[int], list[int], list[int]]:
    """Both reports' rows in one label space: (labels, truth, candidate, reference predictions).

    Raises ValueError when they were not scored on the same rows (no pairing is possible)."""
    labels = list(candidate.labels) + [x for x in reference.labels if x not in candidate.labels]
    index = {label: i for i, label in enumerate(labels)}
    c_truth = [index[candidate.labels[i]] for i in candidate.y_true]
    r_truth = [index[reference.labels[i]] for i in reference.y_true]
    if not c_truth or c_truth != r_truth:
        raise ValueError("the two reports were not scored on the same evaluation rows")
    return (labels, c_truth, [index[candidate.labels[i]] for i in candidate.y_pred],
            [index[reference.labels[i]] for i in reference.y_pred])


def majority_rows(candidate: EvalReport) -> tuple[list[str], list[int], list[int], list[int]]:
    """The candidate paired with the majority-class baseline: every row predicted as the set's most
    frequent label (the strongest constant guess on this set, so the fairest floor to beat)."""
    if not candidate.y_true:
        raise ValueError("no evaluation rows: the candidate cannot be compared with a baseline")
    majority = int(np.bincount(np.asarray(candidate.y_true), minlength=len(candidate.labels)).argmax())
    return (list(candidate.labels), list(candidate.y_true), list(candidate.y_pred),
            [majority] * len(candidate.y_true))
