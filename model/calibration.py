"""Temperature scaling: make the served confidence read as a probability.

A fine-tuned softmax is not calibrated (at threshold 0.9 a 5-class model sent 400 of 400 texts to
review), so the routing threshold could not be planned. One scalar ``T`` per model, fitted on
held-out rows after training by minimising the negative log-likelihood of ``softmax(logits / T)``
(Guo et al. 2017), fixes most of it without changing any prediction (argmax is unchanged).
``T`` is stored in the model's meta and applied by ``LoadedModel`` on every backend.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

T_BOUNDS = (0.05, 20.0)  # a perfectly separated held-out set drives T to 0: stop at a finite sharpening
MIN_ROWS = 10  # fewer held-out rows than this: T = 1 (no evidence to fit on)
ECE_BINS = 15


class Calibration(BaseModel):
    """What was fitted and what it did, on the held-out rows it was fitted on."""

    temperature: float
    n: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    bins: int = ECE_BINS
    # reliability diagram points: (mean confidence, accuracy, rows) per non-empty bin
    reliability_before: list[tuple[float, float, int]] = []
    reliability_after: list[tuple[float, float, int]] = []


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)[np.arange(len(y)), y]
    return float(-np.log(np.clip(p, 1e-12, 1)).mean())


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their share of rows."""
    probs = np.asarray(probs, dtype=np.float64)
    if not len(probs):
        return 0.0
    conf, hit = probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(y)).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(hit[mask].mean() - conf[mask].mean())
    return float(ece)


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, rows) per non-empty bin: the points of a reliability diagram."""
    probs = np.asarray(probs, dtype=np.float64)
    conf, hit = probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(y)).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return [(float(conf[which == b].mean()), float(hit[which == b].mean()), int((which == b).sum()))
            for b in range(bins) if (which == b).any()]


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> Calibration:
    """The NLL-minimising temperature within ``T_BOUNDS`` (1-D, bounded). T = 1 below ``MIN_ROWS`` rows
    or when every held-out row is right (nothing to fit a scale on)."""
    from scipy.optimize import minimize_scalar

    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    t = 1.0
    # without a single held-out error the likelihood only says "sharper" (its optimum is T -> 0): no fit
    if len(y) >= MIN_ROWS and (logits.argmax(axis=1) != y).any():
        lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
        best = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))), bounds=(lo, hi),
                               method="bounded", options={"xatol": 1e-4})
        t = float(np.exp(best.x))
        if nll(logits, y, t) > nll(logits, y, 1.0):  # never worse than leaving it alone
            t = 1.0
    return Calibration(
        temperature=round(t, 6), n=len(y),
        ece_before=round(expected_calibration_error(softmax(logits), y), 6),
        ece_after=round(expected_calibration_error(softmax(logits, t), y), 6),
        nll_before=round(nll(logits, y, 1.0), 6), nll_after=round(nll(logits, y, t), 6),
        reliability_before=reliability(softmax(logits), y), reliability_after=reliability(softmax(logits, t), y))
