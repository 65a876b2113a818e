"""Training reports: confusion matrix, learning-curve and reliability PNGs plus a markdown/JSON summary.

Written next to every training run and logged to MLflow under ``report/``, so a reviewer can see
why a candidate was (not) promoted without re-running anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.calibration import Calibration
from model.evaluate import EvalReport
from model.train import EpochRecord, TrainResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: workers have no display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(report: EvalReport, path: str | Path, *, title: str = "") -> Path:
    """Confusion matrix heat map (rows true, columns predicted) with counts in the cells."""
    plt = _pyplot()
    k = len(report.labels)
    size = min(2.0 + 0.55 * k, 14)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    matrix = report.confusion
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), report.labels, rotation=45, ha="right")
    ax.set_yticks(range(k), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max((max(r) for r in matrix), default=0) or 1
    if k <= 30:
        for i in range(k):
            for j in range(k):
                v = matrix[i][j]
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > top / 2 else "black")
    ax.set_title(title or f"accuracy {report.accuracy:.3f}  macro-F1 {report.macro_f1:.3f}  (n={report.n})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curve(history: Sequence[EpochRecord], path: str | Path, *,
                        loss_curve: Sequence[tuple[int, float]] = (),
                        label_curve: Sequence[tuple[int, float]] = ()) -> Path:
    """Training loss per step and eval metrics per epoch; plus accuracy vs number of labels when given."""
    plt = _pyplot()
    panels = 2 if label_curve else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    if loss_curve:
        ax.plot([s for s, _ in loss_curve], [v for _, v in loss_curve], color="tab:gray", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    evals = [h for h in history if h.eval_accuracy is not None]
    if evals:
        ax2 = ax.twinx()
        ax2.plot([h.step for h in evals], [h.eval_accuracy for h in evals], "o-", color="tab:blue", label="accuracy")
        ax2.plot([h.step for h in evals], [h.eval_macro_f1 for h in evals], "s--", color="tab:orange",
                 label="macro-F1")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("eval (per epoch)")
        ax2.legend(loc="lower right")
    if loss_curve:
        ax.legend(loc="upper right")
    ax.set_title("learning curve")
    if label_curve:
        bx = axes[0][1]
        bx.plot([n for n, _ in label_curve], [a for _, a in label_curve], "o-", color="tab:green")
        bx.set_xlabel("number of labeled examples")
        bx.set_ylabel("accuracy")
        bx.set_ylim(0, 1.02)
        bx.grid(alpha=0.3)
        bx.set_title("accuracy vs labels")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(cal: Calibration, path: str | Path) -> Path:
    """Reliability diagram: accuracy per confidence bin before and after temperature scaling
    (on the diagonal = the confidence reads as a probability); marker area ~ rows in the bin."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfectly calibrated")
    for points, style, name in ((cal.reliability_before, "o--", f"raw softmax (ECE {cal.ece_before:.3f})"),
                                (cal.reliability_after, "s-", f"T = {cal.temperature:.2f} (ECE {cal.ece_after:.3f})")):
        if points:
            ax.plot([c for c, _, _ in points], [a for _, a, _ in points], style, label=name)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability on {cal.n} held-out texts")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else str(v)


def summary(result: TrainResult, report: EvalReport | None = None, extra: dict[str, Any] | None = None) -> dict:
    report = report or result.eval_report
    return {
        "model_dir": result.model_dir,
        "labels": result.labels,
        "base_model": result.base_model,
        "dataset_fingerprint": result.dataset_fingerprint,
        "train_examples": result.train_examples,
        "seconds": result.seconds,
        "steps": result.steps,
        "epochs_completed": result.epochs_completed,
        "stopped_by_time_budget": result.stopped_by_time_budget,
        "params": result.params,
        "history": [h.model_dump() for h in result.history],
        "eval": report.model_dump() if report else None,
        "calibration": result.calibration.model_dump(exclude={"reliability_before", "reliability_after"})
        if result.calibration else None,
        **(extra or {}),
    }


def summary_markdown(data: dict[str, Any]) -> str:
    lines = ["# Training report", ""]
    for key in ("base_model", "dataset_fingerprint", "train_examples", "seconds", "steps", "epochs_completed",
                "stopped_by_time_budget"):
        lines.append(f"- **{key}**: {_fmt(data.get(key))}")
    ev = data.get("eval")
    if ev:
        lines += ["", f"Held-out: accuracy **{ev['accuracy']:.4f}**, macro-F1 **{ev['macro_f1']:.4f}** "
                      f"on {ev['n']} texts.", "", "| label | precision | recall | f1 | support |",
                  "|---|---|---|---|---|"]
        for label, s in ev["per_class"].items():
            lines.append(f"| {label} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |")
    cal = data.get("calibration")
    if cal:
        lines += ["", f"Calibration (temperature scaling on the {cal['n']} held-out texts): T = "
                      f"**{cal['temperature']:.3f}**, expected calibration error {cal['ece_before']:.4f} -> "
                      f"**{cal['ece_after']:.4f}**, NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f} "
                      "(`reliability.png`)."]
    if data.get("history"):
        lines += ["", "| epoch | step | seconds | train loss | accuracy | macro-F1 |", "|---|---|---|---|---|---|"]
        for h in data["history"]:
            lines.append(f"| {h['epoch']} | {h['step']} | {h['seconds']:.1f} | {_fmt(h['train_loss'])} | "
                         f"{_fmt(h['eval_accuracy'])} | {_fmt(h['eval_macro_f1'])} |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, result: TrainResult, report: EvalReport | None = None, *,
                 label_curve: Sequence[tuple[int, float]] = (), extra: dict[str, Any] | None = None) -> list[Path]:
    """Write ``confusion.png`` (when there is an evaluation), ``learning_curve.png``, ``reliability.png``
    (when calibrated), ``summary.md/json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = report or result.eval_report
    written = []
    if report is not None and report.n:
        written.append(plot_confusion(report, out / "confusion.png"))
    written.append(plot_learning_curve(result.history, out / "learning_curve.png", loss_curve=result.loss_curve,
                                       label_curve=label_curve))
    if result.calibration is not None:
        written.append(plot_reliability(result.calibration, out / "reliability.png"))
    data = summary(result, report, extra)
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "summary.md").write_text(summary_markdown(data))
    written += [out / "summary.json", out / "summary.md"]
    return written
