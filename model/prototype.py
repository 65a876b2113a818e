"""Cold start: a classifier with labels but no trained model still answers.

Each label becomes a prototype: the mean sentence embedding (mean pooling, unit length) of its
name, its description and any seed examples, from the shipped base encoder. A text's scores are
``softmax(scale * cosine(text, prototype))``. It is weaker than a fine-tuned model, and its
confidence is what the classifier's threshold reads, so doubtful texts go to review and the
reviewed labels train the first real model, which replaces the prototypes when promoted.

One encoder per process serves every cold classifier (it is the same base model for all).
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import numpy as np
import torch

SCALE = 20.0  # cosine similarities of MiniLM sit in [-0.2, 0.8]: ×20 gives usable softmax margins
MAX_TOKENS = 256


class SentenceEncoder:
    """Mean-pooled, unit-length sentence embeddings from a Hugging Face encoder on CPU."""

    def __init__(self, base_model: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.base_model = base_model
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.model = AutoModel.from_pretrained(base_model).eval()

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS,
                                   return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)


_encoders: dict[str, SentenceEncoder] = {}
_encoders_lock = threading.Lock()


def shared_encoder(base_model: str) -> SentenceEncoder:
    with _encoders_lock:
        if base_model not in _encoders:
            _encoders[base_model] = SentenceEncoder(base_model)
        return _encoders[base_model]


def label_texts(label: str, description: str | None, examples: list[str]) -> list[str]:
    """What stands for a label: its name in words, its description, its examples."""
    name = label.replace("_", " ").replace("-", " ").replace(".", " ")
    return [name, *([description] if description else []), *examples]


class PrototypeModel:
    """Quacks like model.runtime.LoadedModel where serving needs it (labels, version, predict_proba)."""

    backend = "prototype"
    onnx = None
    temperature = 1.0

    def __init__(self, encoder: SentenceEncoder, labels: list[str], prototypes: np.ndarray, version: str) -> None:
        self.encoder = encoder
        self.model = encoder.model  # shared by every cold classifier; resident_bytes counts it each time (errs high)
        self.labels = labels
        self.prototypes = prototypes
        self.version = version

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        sims = self.encoder.embed(texts) @ self.prototypes.T
        logits = SCALE * sims
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        probs = self.predict_proba(texts)
        return [(self.labels[int(p.argmax())], float(p.max())) for p in probs]

    def warm_up(self) -> None:
        self.predict_proba(["warm up"])


def prototype_model(base_model: str, labels: list[str], descriptions: dict[str, str] | None = None,
                    examples: dict[str, list[str]] | None = None) -> PrototypeModel:
    """The cold-start model of a classifier; its version names what it was built from, so a changed
    description or example set is a new version."""
    descriptions, examples = descriptions or {}, examples or {}
    encoder = shared_encoder(base_model)
    protos = []
    for label in labels:
        emb = encoder.embed(label_texts(label, descriptions.get(label), examples.get(label, [])))
        mean = emb.mean(axis=0)
        protos.append(mean / max(float(np.linalg.norm(mean)), 1e-9))
    version = prototype_version(base_model, labels, descriptions, examples)
    return PrototypeModel(encoder, labels, np.stack(protos).astype(np.float32), version)


def prototype_version(base_model: str, labels: list[str], descriptions: dict[str, str] | None = None,
                      examples: dict[str, list[str]] | None = None) -> str:
    """``prototype-<digest of what the prototypes are built from>``: cheap, no encoder."""
    spec: dict[str, Any] = {"base": base_model, "labels": labels, "descriptions": descriptions or {},
                            "examples": examples or {}}
    return "prototype-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
