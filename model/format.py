"""The model directory: what ``fine_tune`` writes, the registry stores, and ``LoadedModel`` reads.

HF ``save_pretrained`` output of ``AutoModelForSequenceClassification`` + tokenizer, plus
``sift_model.json`` (labels in output order, base_model, max_length, classifier, metrics,
dataset_fingerprint, params, parent, temperature and calibration: ``model/calibration.py``).
Reading the meta imports neither torch nor transformers, so the retrain stage can look at a
champion without paying for them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MODEL_META = "sift_model.json"


class ModelLoadError(RuntimeError):
    """A directory that is not a usable Sift model; the message says what is missing."""


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / MODEL_META
    if not path.is_file():
        raise ModelLoadError(f"{model_dir} is not a Sift model directory: {MODEL_META} is missing")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(meta.get("labels"), list) or len(meta["labels"]) < 2:
        raise ModelLoadError(f"{path}: 'labels' must list at least 2 labels")
    return meta


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def weights_digest(model_dir: str | Path) -> str | None:
    """SHA-256 over a model directory's weight files (names and bytes): what a derived artifact, such as
    an exported ONNX graph, was made from. None when the folder holds no weight file."""
    files = sorted({f for pattern in WEIGHT_FILES for f in Path(model_dir).glob(pattern) if f.is_file()})
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def save_model_dir(out: Path, model: Any, tokenizer: Any, meta: dict[str, Any]) -> None:
    """Write the model directory; ``sift_model.json`` goes last, so its presence means complete."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_META).unlink(missing_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    tmp = out / f".{MODEL_META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    os.replace(tmp, out / MODEL_META)


def init_model_dir(out: Path, base_model: str, labels: list[str], *, max_length: int = 128,
                   classifier: str = "") -> Path:
    """``base_model`` with a fresh, untrained head for ``labels``: a servable directory for measuring
    serving cost (bench/) where accuracy does not matter."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        base_model, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={v: i for i, v in enumerate(labels)})
    save_model_dir(out, model, AutoTokenizer.from_pretrained(base_model), {
        "labels": labels, "base_model": base_model, "max_length": max_length, "classifier": classifier,
        "metrics": {}, "dataset_fingerprint": ""})
    return out
