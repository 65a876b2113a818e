"""Fine-tune an encoder into a Sift model directory: a plain torch loop, deterministic, time-boxed.

Plain torch rather than ``transformers.Trainer``: fewer moving parts on a 2-core CPU box, exact
control of the time budget, and no accelerate dependency. One ``TrainSpec`` says what to train;
``fine_tune`` is ``prepare`` (load, tokenise, optimiser) -> ``train_loop`` -> ``calibrate`` (temperature
on the held-out rows, ``model/calibration.py``) -> ``save`` (the model directory of ``model/format.py``,
which ``model.runtime.LoadedModel`` reads).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.calibration import Calibration, fit_temperature, softmax
from model.data import LabeledText, fingerprint, label_counts
from model.evaluate import EvalReport, evaluate, prediction_reference
from model.format import read_meta, save_model_dir
from model.runtime import LoadedModel

log = logging.getLogger(__name__)


class TrainSpec(BaseModel):
    """What one fine-tune trains, resolved once before any work starts.

    For a classifier it is built from its retrain policy by ``retrain.tracking.train_spec`` (the
    one place policy defaults are applied); its fields are recorded as the run's parameters.
    ``head_learning_rate`` (pooler + classification head; None: ``learning_rate``) lets the fresh head
    learn fast while the encoder moves gently. Measured on 800 Reuters-R8 texts, 2 epochs: one shared
    5e-5 gives 84 % accuracy / 0.42 macro-F1, head 1e-3 gives 96 % / 0.88. ``init_from`` (a model
    directory) warm-starts; ``time_budget_s`` stops cleanly; ``freeze_word_embeddings`` keeps the
    vocabulary table (half of MiniLM's 22.7 M weights) as pretrained: its dense gradient, clipping and
    AdamW update (weight decay drags all 30 k rows, seen or not) made a step 1.9x slower (1.83 s vs
    0.95 s, 16 Reuters texts, 2 cores), and a few hundred labels cannot teach a vocabulary anyway;
    ``num_threads`` sets torch's threads for this process; ``device`` defaults to CUDA when available,
    else CPU (the saved model loads anywhere).
    """

    model_config = ConfigDict(frozen=True)

    labels: list[str]
    base_model: str
    classifier: str = ""
    epochs: int | float = 2
    learning_rate: float = 5e-5
    head_learning_rate: float | None = 1e-3
    batch_size: int = Field(default=16, ge=1)
    max_length: int = Field(default=128, ge=2)
    num_hidden_layers: int | None = None
    init_from: str | None = None
    time_budget_s: float | None = None
    seed: int = 0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    freeze_word_embeddings: bool = True
    num_threads: int | None = None
    device: str | None = None

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise ValueError("labels must be at least 2 unique names")
        return labels

    @field_validator("init_from", mode="before")
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    def check_rows(self, rows: list[LabeledText], eval_rows: list[LabeledText] | None = None, *,
                   source: str = "the training rows") -> None:
        """The one unknown-label check: run before anything is stored, logged or trained."""
        owner = f"the classifier {self.classifier!r}" if self.classifier else "the model"
        for what, part in ((source, rows), ("the evaluation rows", eval_rows or [])):
            unknown = sorted({r.label for r in part} - set(self.labels))
            if unknown:
                raise ValueError(f"{what}: labels {owner} does not know: {unknown} (it knows {self.labels})")


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
    calibration: Calibration | None = None
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


BUCKET_BATCHES = 8


def _batches(encoded: list[dict[str, list[int]]], targets: list[int], batch_size: int,
             generator: torch.Generator, tokenizer: Any) -> Iterator[Any]:
    """Length-bucketed batches: shuffle, sort by length within pools of ``BUCKET_BATCHES`` batches, cut,
    shuffle the batches.

    Why: a batch is padded to its longest text, and one long text in sixteen pads them all. On 560
    Reuters texts at max_length 128 (a quarter of them truncated) random batches carried 2,048 tokens
    a step, pools of 8 batches 1,392 (50 batches: 1,298), and an epoch took 68 s instead of 184 s on a
    loaded 2-core machine. Small pools keep batches mixed: a label whose texts share a length would
    otherwise fill whole batches; a last, partial pool stays unsorted for the same reason (on a
    20-text set sorting made one batch all "politics" and the warm start forgot "sports").
    """
    order = torch.randperm(len(encoded), generator=generator).tolist()
    pool = batch_size * BUCKET_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        if len(chunk) == pool:
            chunk.sort(key=lambda i: len(encoded[i]["input_ids"]))
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    for k in torch.randperm(len(batches), generator=generator).tolist():
        idx = batches[k]
        batch = tokenizer.pad([encoded[i] for i in idx], return_tensors="pt")  # dynamic padding
        batch["labels"] = torch.tensor([targets[i] for i in idx])
        yield batch


@dataclass
class Prepared:
    """A model and optimiser ready for the loop: what ``prepare`` builds from a spec and the rows."""

    spec: TrainSpec
    model: Any
    tokenizer: Any
    base_model: str  # the original encoder, also through warm starts
    parent: dict[str, Any]  # the warm start's meta, {} for a fresh model
    device: torch.device
    encoded: list[dict[str, list[int]]]
    targets: list[int]
    steps_per_epoch: int
    total_steps: int
    optimizer: Any
    scheduler: Any
    started: float  # monotonic; the time budget counts from here, loading included


@dataclass
class LoopOutcome:
    steps: int = 0
    stopped_by_time_budget: bool = False
    history: list[EpochRecord] = field(default_factory=list)
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    eval_report: EvalReport | None = None
    calibration: Calibration | None = None


def prepare(spec: TrainSpec, rows: list[LabeledText], eval_rows: list[LabeledText] | None = None) -> Prepared:
    """Check the rows, seed, load the model (fresh head or warm start), tokenise, build the optimiser."""
    from transformers import get_linear_schedule_with_warmup

    if not rows:
        raise ValueError("no training rows")
    spec.check_rows(rows, eval_rows)
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    _seed_everything(spec.seed)
    started = time.monotonic()
    model, tokenizer, base, parent = _load_model(spec.labels, spec.base_model, spec.init_from,
                                                 spec.num_hidden_layers)
    dev = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if spec.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    model.to(dev)
    index = {label: i for i, label in enumerate(spec.labels)}
    steps_per_epoch = math.ceil(len(rows) / spec.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * spec.epochs))
    optimizer = torch.optim.AdamW(
        _param_groups(model, spec.weight_decay, spec.learning_rate, spec.head_learning_rate), lr=spec.learning_rate)
    return Prepared(
        spec=spec, model=model, tokenizer=tokenizer, base_model=base, parent=parent, device=dev,
        encoded=[dict(e) for e in _tokenize(tokenizer, [r.text for r in rows], spec.max_length)],
        targets=[index[r.label] for r in rows], steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        optimizer=optimizer,
        scheduler=get_linear_schedule_with_warmup(optimizer, int(total_steps * spec.warmup_ratio), total_steps),
        started=started,
    )


def train_loop(prep: Prepared, eval_rows: list[LabeledText] | None = None, *, progress: bool = True,
               on_epoch: Callable[[EpochRecord], None] | None = None) -> LoopOutcome:
    """Train until the spec's epochs are done or its time budget (checked before every step) runs out;
    score ``eval_rows`` after every epoch."""
    from tqdm.auto import tqdm

    spec, model, dev = prep.spec, prep.model, prep.device
    generator = torch.Generator().manual_seed(spec.seed)
    runtime = LoadedModel(model, prep.tokenizer, spec.labels, version="training", max_length=spec.max_length)
    out = LoopOutcome()
    log_every = max(1, prep.total_steps // 50)
    window: list[float] = []
    epoch_losses: list[float] = []

    def end_of_epoch(epoch: float) -> None:
        rec = EpochRecord(epoch=round(epoch, 4), step=out.steps, seconds=round(time.monotonic() - prep.started, 3),
                          train_loss=float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
        if eval_rows:
            model.eval()
            out.eval_report = evaluate(runtime, eval_rows)
            model.train()
            rec.eval_accuracy, rec.eval_macro_f1 = out.eval_report.accuracy, out.eval_report.macro_f1
        out.history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)

    bar = tqdm(total=prep.total_steps, disable=not progress, desc="fine-tune", unit="step", dynamic_ncols=True)
    model.train()
    epoch = 0
    while out.steps < prep.total_steps and not out.stopped_by_time_budget:
        epoch_losses = []
        for batch in _batches(prep.encoded, prep.targets, spec.batch_size, generator, prep.tokenizer):
            if out.steps >= prep.total_steps:
                break
            if spec.time_budget_s is not None and time.monotonic() - prep.started >= spec.time_budget_s:
                out.stopped_by_time_budget = True
                log.warning("time budget of %.0f s reached after %d of %d steps", spec.time_budget_s, out.steps,
                            prep.total_steps)
                break
            loss = model(**batch.to(dev)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            prep.optimizer.step()
            prep.scheduler.step()
            prep.optimizer.zero_grad(set_to_none=True)
            out.steps += 1
            value = float(loss.detach())
            epoch_losses.append(value)
            window.append(value)
            if out.steps % log_every == 0 or out.steps == prep.total_steps:
                out.loss_curve.append((out.steps, float(np.mean(window))))
                window = []
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
        epoch += 1
        if epoch_losses:
            end_of_epoch(min(out.steps / prep.steps_per_epoch, float(spec.epochs)))
    bar.close()
    model.eval()
    return out


def calibrate(prep: Prepared, out: LoopOutcome, eval_rows: list[LabeledText] | None) -> LoopOutcome:
    """Fit the temperature on the held-out rows (none: T = 1). It changes no prediction, so the held-out
    scores stand; ``out.calibration`` records ECE before and after on the rows it was fitted on."""
    if not eval_rows:
        return out
    spec = prep.spec
    runtime = LoadedModel(prep.model, prep.tokenizer, spec.labels, version="training", max_length=spec.max_length)
    prep.model.eval()
    index = {label: i for i, label in enumerate(spec.labels)}
    logits = runtime.predict_logits([r.text for r in eval_rows])
    out.calibration = fit_temperature(logits, np.asarray([index[r.label] for r in eval_rows]))
    if out.eval_report is not None:  # what serving will answer: the drift reference must see the same
        probs = softmax(logits, out.calibration.temperature)
        out.eval_report.ece = out.calibration.ece_after
        out.eval_report.reference = prediction_reference(
            spec.labels, [spec.labels[i] for i in probs.argmax(axis=1)], probs.max(axis=1).tolist())
    return out


def save(prep: Prepared, out: LoopOutcome, rows: list[LabeledText], out_dir: str | Path) -> TrainResult:
    """Write the model directory (device-neutral, meta with metrics and lineage) and describe the training."""
    spec, model = prep.spec, prep.model
    seconds = time.monotonic() - prep.started
    metrics: dict[str, float] = {
        "train_seconds": round(seconds, 3),
        "steps": float(out.steps),
        "epochs_completed": round(out.steps / prep.steps_per_epoch, 4),
        "train_examples": float(len(rows)),
    }
    if out.history:
        metrics["train_loss"] = out.history[-1].train_loss
    if out.eval_report is not None:
        metrics.update(out.eval_report.flat_metrics())
        metrics["eval_examples"] = float(out.eval_report.n)
    if out.calibration is not None:
        metrics.update(temperature=out.calibration.temperature, ece_before=out.calibration.ece_before,
                       ece_after=out.calibration.ece_after)
    fp = fingerprint(rows)
    params = {
        **spec.model_dump(exclude={"labels", "base_model", "classifier", "num_threads"}),
        "num_hidden_layers": int(model.config.num_hidden_layers), "init_from": spec.init_from or "",
        "device": prep.device.type, "torch_threads": torch.get_num_threads(),
    }
    path = Path(out_dir)
    model.to("cpu")  # a model directory is device-neutral
    parent = prep.parent
    save_model_dir(path, model, prep.tokenizer, {
        "labels": spec.labels, "base_model": prep.base_model, "max_length": spec.max_length,
        "classifier": spec.classifier, "metrics": metrics, "dataset_fingerprint": fp,
        "label_counts": label_counts(rows), "params": params,
        "temperature": out.calibration.temperature if out.calibration else 1.0,
        "calibration": out.calibration.model_dump() if out.calibration else None,
        "parent": {"base_model": parent.get("base_model"), "dataset_fingerprint": parent.get("dataset_fingerprint")}
        if parent else None,
    })
    return TrainResult(
        model_dir=str(path), labels=spec.labels, base_model=prep.base_model, metrics=metrics, history=out.history,
        loss_curve=out.loss_curve, seconds=round(seconds, 3), steps=out.steps,
        epochs_completed=metrics["epochs_completed"], stopped_by_time_budget=out.stopped_by_time_budget,
        train_examples=len(rows), dataset_fingerprint=fp, eval_report=out.eval_report,
        calibration=out.calibration, params=params,
    )


def fine_tune(rows: list[LabeledText], spec: TrainSpec, *, out_dir: str | Path,
              eval_rows: list[LabeledText] | None = None, progress: bool = True,
              on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
    """Train ``spec`` on ``rows`` and save to ``out_dir``; a time-boxed run still evaluates and saves
    what it has. ``eval_rows`` are scored after every epoch (``on_epoch`` sees each record)."""
    prep = prepare(spec, rows, eval_rows)
    out = calibrate(prep, train_loop(prep, eval_rows, progress=progress, on_epoch=on_epoch), eval_rows)
    return save(prep, out, rows, out_dir)


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
