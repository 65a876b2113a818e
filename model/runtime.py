"""Load a Sift model directory and turn texts into class probabilities, on the backend that serves best.

This sits in the request path of the serving engine, so it imports no MLflow and does nothing per
call beyond tokenising and one forward pass per batch. ``LoadedModel.load`` picks the backend: on
CPU, ONNX Runtime (exported at load time, ``model/onnx_export.py``) when asked for and its answers
agree with torch's, else torch, int8-quantised when asked for. The directory format is
``model/format.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from model.format import MODEL_META, ModelLoadError, read_meta
from model.onnx_export import OnnxExportError, export_onnx

log = logging.getLogger(__name__)

Runtime = Literal["onnx", "torch"]
Quantize = Literal["none", "int8"]


def quantize_int8(module: Any) -> Any:
    """Dynamic int8 quantisation of Linear layers, per output channel: per-tensor scales moved a
    fine-tuned MiniLM's probabilities by up to 0.94 (3% of labels flipped on 200 Reuters texts),
    per-channel by 0.37 (0.5% flipped), no slower. Used when ONNX Runtime does not serve."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager-mode API is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(
            module, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def length_chunks(lengths: list[int], max_batch: int, max_waste: float = 0.05) -> list[list[int]]:
    """Indices grouped by similar length: a chunk grows while padding wastes at most ``max_waste``
    of its tokens (lengths sorted descending, so each chunk's first text sets its padded width)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    chunks: list[list[int]] = []
    current: list[int] = []
    width = used = 0
    for i in order:
        if current and (len(current) >= max_batch
                        or 1 - (used + lengths[i]) / (width * (len(current) + 1)) > max_waste):
            chunks.append(current)
            current, used = [], 0
        if not current:
            width = lengths[i]
        current.append(i)
        used += lengths[i]
    if current:
        chunks.append(current)
    return chunks


class LoadedModel:
    """A classifier ready to predict; thread-safe (one lock around the tokenizer and forward pass)."""

    def __init__(self, model: Any, tokenizer: Any, labels: list[str], *, version: str = "local",
                 max_length: int = 128, meta: dict[str, Any] | None = None, model_dir: str | None = None,
                 batch_size: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.version = str(version)
        self.max_length = int(max_length)
        self.meta = meta or {}
        self.model_dir = model_dir
        self.batch_size = batch_size
        self._lock = threading.Lock()  # fast tokenizers raise "Already borrowed" under concurrent use
        self.device = next(model.parameters()).device
        # the ONNX Runtime session when it serves this model (chosen by ``load``), else torch does
        self.onnx: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None

    @property
    def backend(self) -> str:
        """What computes the forward pass: for /metrics and logs."""
        if self.onnx is not None:
            return "onnx-int8" if getattr(self.onnx, "quantized", False) else "onnx"
        quantized = any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in self.model.modules())
        return "torch-int8" if quantized else "torch"

    @classmethod
    def load(cls, model_dir: str | Path, version: str = "local", *, runtime: Runtime = "torch",
             quantize: Quantize = "none", num_threads: int | None = None, max_length: int | None = None,
             batch_size: int = 64, device: str | None = None) -> LoadedModel:
        """Load a model directory for inference (CPU unless ``device`` says otherwise) on its backend.

        On CPU, ``runtime="onnx"`` exports to ONNX Runtime and falls back to torch (logged) when the
        export fails or disagrees; ``quantize="int8"`` quantises whichever backend serves. Both are
        ignored on an accelerator. ``num_threads`` sets torch's intra-op threads, process-wide (the
        serving engine picks it once), and ONNX Runtime's for this model.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        meta = read_meta(model_dir)
        labels = [str(x) for x in meta["labels"]]
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{model_dir}: cannot load the model or tokenizer: {exc}") from exc
        if model.config.num_labels != len(labels):
            raise ModelLoadError(
                f"{model_dir}: the model has {model.config.num_labels} outputs but {MODEL_META} lists "
                f"{len(labels)} labels"
            )
        model.eval()
        if device:
            model.to(device)
        loaded = cls(model, tokenizer, labels, version=version,
                     max_length=max_length or int(meta.get("max_length", 128)), meta=meta,
                     model_dir=str(model_dir), batch_size=batch_size)
        if loaded.device.type == "cpu":
            loaded._choose_backend(runtime, quantize, num_threads or 0)
        return loaded

    def _choose_backend(self, runtime: Runtime, quantize: Quantize, threads: int) -> None:
        if runtime == "onnx":
            try:
                self.onnx = export_onnx(self.model, self.tokenizer, quantize=quantize == "int8", threads=threads)
            except OnnxExportError as exc:
                log.warning("%s v%s: serving with torch instead of ONNX Runtime: %s",
                            self.meta.get("classifier") or self.model_dir, self.version, exc)
        if self.onnx is None and quantize == "int8":
            self.model = quantize_int8(self.model)

    @torch.inference_mode()
    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities, shape (len(texts), len(labels)), float32, rows in input order.

        Texts are tokenised once, sorted by length and cut into chunks whose padding stays small:
        on CPU the cost of a forward pass is proportional to the padded tokens, so one long text
        must not make fifteen short ones pay for its length.
        """
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
            ids = enc["input_ids"]
            for chunk in length_chunks([len(x) for x in ids], self.batch_size):
                rows = {k: [enc[k][i] for i in chunk] for k in enc}
                if self.onnx is not None:
                    logits = torch.from_numpy(self.onnx(self.tokenizer.pad(rows, return_tensors="np")))
                else:
                    logits = self.model(**self.tokenizer.pad(rows, return_tensors="pt").to(self.device)).logits
                out[chunk] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return out

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """(label, confidence) per text."""
        probs = self.predict_proba(texts)
        return [(self.labels[int(p.argmax())], float(p.max())) for p in probs]

    def warm_up(self) -> None:
        """Run a few forward passes so the first real request does not pay for lazy initialisation."""
        self.predict_proba(["warm up", "a somewhat longer sentence to warm up the model " * 4])
        self.predict_proba(["x"] * min(self.batch_size, 8))

    def __repr__(self) -> str:
        return f"LoadedModel(version={self.version!r}, labels={self.labels}, max_length={self.max_length})"
