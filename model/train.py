"""Fine-tune an encoder into a Sift model directory: a plain torch loop, deterministic, time-boxed.

Plain torch rather than ``transformers.Trainer``: fewer moving parts on a 2-core CPU box, exact
control of the time budget, and no accelerate dependency. Output follows the model directory
contract that ``classifier.runtime.LoadedModel`` reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from classifier.runtime import MODEL_META, LoadedModel, read_meta
from retrain.dataio import LabeledText, fingerprint, label_counts
from retrain.evaluate import EvalReport, evaluate

log = logging.getLogger(__name__)


class EpochRecord(BaseModel):
    epoch: float  # fractional when the time budget stopped an epoch part-way
    step: int
    seconds: float
    train_loss: float
    eval_accuracy: float | None = None
    eval_macro_f1: float | None = None


class TrainResult(BaseModel):
    model_dir: str
    labels: list[str]
    base_model: str
    metrics: dict[str, float]
    history: list[EpochRecord] = Field(default_factory=list)
    loss_curve: list[tuple[int, float]] = Field(default_factory=list, description="(step, mean loss) points")
    seconds: float
    steps: int
    epochs_completed: float
    stopped_by_time_budget: bool = False
    train_examples: int
    dataset_fingerprint: str
    eval_report: EvalReport | None = None
    params: dict[str, Any] = Field(default_factory=dict)


@contextmanager
def _quiet_transformers():
    """Loading a truncated encoder or a fresh head warns about unused/new weights: expected here."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _load_model(labels: list[str], base_model: str, init_from: str | Path | None,
                num_hidden_layers: int | None) -> tuple[Any, Any, str, dict[str, Any]]:
    """(model, tokenizer, base model name, parent meta). A warm start keeps the head rows of shared labels."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in enumerate(labels)}
    parent: dict[str, Any] = {}
    with _quiet_transformers():
        if init_from is not None:
            parent = read_meta(init_from)
            old_labels = [str(x) for x in parent["labels"]]
            tokenizer = AutoTokenizer.from_pretrained(str(init_from))
            old = AutoModelForSequenceClassification.from_pretrained(str(init_from))
            if old_labels == labels:
                model = old
            else:
                model = AutoModelForSequenceClassification.from_pretrained(
                    str(init_from), num_labels=len(labels), id2label=id2label, label2id=label2id,
                    ignore_mismatched_sizes=True,
                )
                head_new, head_old = model.classifier, old.classifier
                with torch.no_grad():
                    for i, label in enumerate(labels):
                        if label in old_labels:
                            j = old_labels.index(label)
                            head_new.weight[i].copy_(head_old.weight[j])
                            head_new.bias[i].copy_(head_old.bias[j])
                del old
            base = str(parent.get("base_model") or init_from)
        else:
            extra = {"num_hidden_layers": num_hidden_layers} if num_hidden_layers else {}
            tokenizer = AutoTokenizer.from_pretrained(base_model)
            model = AutoModelForSequenceClassification.from_pretrained(
                base_model, num_labels=len(labels), id2label=id2label, label2id=label2id, **extra
            )
            base = base_model
    model.config.id2label = id2label
    model.config.label2id = label2id
    return model, tokenizer, base, parent


def _batches(encoded: list[dict[str, list[int]]], targets: list[int], batch_size: int,
             generator: torch.Generator, tokenizer: Any):
    order = torch.randperm(len(encoded), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer.pad([encoded[i] for i in idx], return_tensors="pt")  # dynamic padding
        batch["labels"] = torch.tensor([targets[i] for i in idx])
        yield batch


def fine_tune(
    rows: list[LabeledText],
    labels: list[str],
    *,
    base_model: str,
    out_dir: str | Path,
    eval_rows: list[LabeledText] | None = None,
    epochs: float = 2,
    learning_rate: float = 5e-5,
    batch_size: int = 16,
    max_length: int = 128,
    num_hidden_layers: int | None = None,
    init_from: str | Path | None = None,
    time_budget_s: float | None = None,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    classifier: str = "",
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.06,
    num_threads: int | None = None,
    device: str | None = None,
    head_learning_rate: float | None = 1e-3,
) -> TrainResult:
    """Fine-tune ``base_model`` (or warm-start from the model directory ``init_from``) and save to ``out_dir``.

    Stops cleanly at ``time_budget_s`` (checked before every step) and still evaluates and saves what
    it has. ``num_threads`` sets torch's threads for this process (default: torch's, i.e. the cores).
    ``device`` defaults to CUDA when available, else CPU; the saved model loads anywhere.
    ``head_learning_rate`` (pooler + classification head; None: ``learning_rate``) lets the fresh head
    learn fast while the encoder moves gently. Measured on 800 Reuters-R8 texts, 2 epochs: one shared
    5e-5 gives 84 % accuracy / 0.42 macro-F1, head 1e-3 gives 96 % / 0.88.
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise ValueError("labels must be at least 2 unique names")
    if not rows:
        raise ValueError("no training rows")
    known = set(labels)
    for name, part in (("training", rows), ("evaluation", eval_rows or [])):
        unknown = sorted({r.label for r in part} - known)
        if unknown:
            raise ValueError(f"{name} rows have labels outside {labels}: {unknown}")
    if num_threads:
        torch.set_num_threads(num_threads)
    _seed_everything(seed)
    started = time.monotonic()

    model, tokenizer, base, parent = _load_model(labels, base_model, init_from, num_hidden_layers)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    index = {label: i for i, label in enumerate(labels)}
    encoded = [dict(e) for e in _tokenize(tokenizer, [r.text for r in rows], max_length)]
    targets = [index[r.label] for r in rows]

    steps_per_epoch = math.ceil(len(rows) / batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * epochs))
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay, learning_rate, head_learning_rate),
                                  lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * warmup_ratio), total_steps)
    generator = torch.Generator().manual_seed(seed)

    runtime = LoadedModel(model, tokenizer, labels, version="training", max_length=max_length)
    history: list[EpochRecord] = []
    loss_curve: list[tuple[int, float]] = []
    log_every = max(1, total_steps // 50)
    window: list[float] = []
    epoch_losses: list[float] = []
    step = 0
    stopped = False
    last_report: EvalReport | None = None

    def end_of_epoch(epoch: float) -> None:
        nonlocal last_report
        rec = EpochRecord(epoch=round(epoch, 4), step=step, seconds=round(time.monotonic() - started, 3),
                          train_loss=float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
        if eval_rows:
            model.eval()
            last_report = evaluate(runtime, eval_rows)
            model.train()
            rec.eval_accuracy, rec.eval_macro_f1 = last_report.accuracy, last_report.macro_f1
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)

    bar = tqdm(total=total_steps, disable=not progress, desc="fine-tune", unit="step", dynamic_ncols=True)
    model.train()
    epoch = 0
    while step < total_steps and not stopped:
        epoch_losses = []
        for batch in _batches(encoded, targets, batch_size, generator, tokenizer):
            if step >= total_steps:
                break
            if time_budget_s is not None and time.monotonic() - started >= time_budget_s:
                stopped = True
                log.warning("time budget of %.0f s reached after %d of %d steps", time_budget_s, step, total_steps)
                break
            loss = model(**batch.to(dev)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            epoch_losses.append(value)
            window.append(value)
            if step % log_every == 0 or step == total_steps:
                loss_curve.append((step, float(np.mean(window))))
                window = []
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
        epoch += 1
        if epoch_losses:
            end_of_epoch(min(step / steps_per_epoch, float(epochs)))
    bar.close()
    model.eval()
    seconds = time.monotonic() - started

    metrics: dict[str, float] = {
        "train_seconds": round(seconds, 3),
        "steps": float(step),
        "epochs_completed": round(step / steps_per_epoch, 4),
        "train_examples": float(len(rows)),
    }
    if history:
        metrics["train_loss"] = history[-1].train_loss
    if last_report is not None:
        metrics.update(last_report.flat_metrics())
        metrics["eval_examples"] = float(last_report.n)
    fp = fingerprint(rows)
    params = {
        "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "max_length": max_length,
        "num_hidden_layers": int(model.config.num_hidden_layers), "seed": seed, "time_budget_s": time_budget_s,
        "weight_decay": weight_decay, "warmup_ratio": warmup_ratio, "head_learning_rate": head_learning_rate,
        "init_from": str(init_from or ""),
        "device": dev.type, "torch_threads": torch.get_num_threads(),
    }
    out = Path(out_dir)
    model.to("cpu")  # a model directory is device-neutral
    save_model_dir(out, model, tokenizer, {
        "labels": labels, "base_model": base, "max_length": max_length, "classifier": classifier,
        "metrics": metrics, "dataset_fingerprint": fp,
        "label_counts": label_counts(rows), "params": params,
        "parent": {"base_model": parent.get("base_model"), "dataset_fingerprint": parent.get("dataset_fingerprint")}
        if parent else None,
    })
    return TrainResult(
        model_dir=str(out), labels=labels, base_model=base, metrics=metrics, history=history,
        loss_curve=loss_curve, seconds=round(seconds, 3), steps=step,
        epochs_completed=metrics["epochs_completed"], stopped_by_time_budget=stopped, train_examples=len(rows),
        dataset_fingerprint=fp, eval_report=last_report, params=params,
    )


def _tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[Any]:
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    keys = list(enc.keys())
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


HEAD_PREFIXES = ("classifier.", "pooler.", "bert.pooler.", "pre_classifier.")


def _param_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                  head_lr: float | None) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights (the usual BERT recipe); the head may get its own rate."""
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "LayerNorm" in name or "bias" in name
        head = name.startswith(HEAD_PREFIXES)
        groups.setdefault((head, no_decay), []).append(p)
    return [
        {"params": ps, "weight_decay": 0.0 if no_decay else weight_decay, "lr": (head_lr or lr) if head else lr}
        for (head, no_decay), ps in groups.items()
    ]


def save_model_dir(out: Path, model: Any, tokenizer: Any, meta: dict[str, Any]) -> None:
    """Write the model directory contract; ``sift_model.json`` goes last, so its presence means complete."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_META).unlink(missing_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    tmp = out / f".{MODEL_META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    os.replace(tmp, out / MODEL_META)
