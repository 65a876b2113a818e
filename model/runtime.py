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

from model.format import MODEL_META, ModelLoadError, read_meta, weights_digest
from model.onnx_export import SERVING_GRAPH_DIR, OnnxExportError, export_onnx

log = logging.getLogger(__name__)

Runtime = Literal["onnx", "torch"]
Quantize = Literal["none", "int8"]
LongText = Literal["head", "head_tail", "chunks"]
CHARS_PER_WINDOW = 32  # characters read per window token before a text counts as long (a bound, not a rule)
MAX_CHUNKS = 64  # ``chunks`` scores at most this many windows of one text, spread over its length


def text_windows(n_tokens: int, body: int, strategy: LongText,
                 max_chunks: int = MAX_CHUNKS) -> list[list[tuple[int, int]]]:
    """The windows the model sees of a text of ``n_tokens`` tokens (special tokens excluded): each is a
    list of [start, end) token ranges, at most ``body`` tokens in all.

    ``head``: the first ``body`` tokens. ``head_tail``: the first half and the last half of the
    window (a document states its topic at its start or sums it up at its end; Sun et al. 2019 found
    head+tail the best single window for long-text classification). ``chunks``: consecutive windows
    over the whole text (at most ``max_chunks``, evenly spaced, first and last included), whose
    probabilities the caller averages: every part counts, at one forward pass per window.
    """
    if n_tokens <= body:
        return [[(0, n_tokens)]]
    if strategy == "head":
        return [[(0, body)]]
    if strategy == "head_tail":
        head = (body + 1) // 2
        return [[(0, head), (n_tokens - (body - head), n_tokens)]]
    starts = list(range(0, n_tokens, body))
    if len(starts) > max_chunks:
        picks = np.linspace(0, len(starts) - 1, max_chunks).round().astype(int)
        starts = [starts[i] for i in sorted(set(picks.tolist()))]
    return [[(s, min(s + body, n_tokens))] for s in starts]


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
                 batch_size: int = 64, long_text: LongText = "head_tail") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.version = str(version)
        self.max_length = int(max_length)
        self.meta = meta or {}
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.long_text: LongText = long_text
        # temperature scaling fitted at training (model/calibration.py): probabilities are softmax(logits / T)
        self.temperature = float(self.meta.get("temperature") or 1.0)
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
             batch_size: int = 64, device: str | None = None, long_text: LongText = "head_tail",
             onnx_cache: Path | None = None) -> LoadedModel:
        """Load a model directory for inference (CPU unless ``device`` says otherwise) on its backend.

        On CPU, ``runtime="onnx"`` exports to ONNX Runtime and falls back to torch (logged) when the
        export fails or disagrees; ``quantize="int8"`` quantises whichever backend serves. Both are
        ignored on an accelerator. ``num_threads`` sets torch's intra-op threads, process-wide (the
        serving engine picks it once), and ONNX Runtime's for this model. ``long_text`` chooses the
        window of a text longer than ``max_length`` tokens (``text_windows``). ``onnx_cache``: a folder
        of this version's own where the exported graph is kept for the next load (``export_onnx``).
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
                     model_dir=str(model_dir), batch_size=batch_size, long_text=long_text)
        if loaded.device.type == "cpu":
            loaded._choose_backend(runtime, quantize, num_threads or 0, onnx_cache)
        return loaded

    def _choose_backend(self, runtime: Runtime, quantize: Quantize, threads: int,
                        onnx_cache: Path | None = None) -> None:
        if runtime == "onnx":
            model_dir = self.model_dir
            packaged = Path(model_dir) / SERVING_GRAPH_DIR if model_dir else None  # a retrain job's
            try:
                self.onnx = export_onnx(self.model, self.tokenizer, quantize=quantize == "int8", threads=threads,
                                        cache_dir=onnx_cache, packaged_dir=packaged,
                                        weights=(lambda: weights_digest(model_dir)) if model_dir else None)
            except OnnxExportError as exc:
                log.warning("%s v%s: serving with torch instead of ONNX Runtime: %s",
                            self.meta.get("classifier") or self.model_dir, self.version, exc)
        if self.onnx is None and quantize == "int8":
            self.model = quantize_int8(self.model)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities, shape (len(texts), len(labels)), float32, rows in input order:
        ``softmax(logits / temperature)`` per window; ``chunks`` averages a text's windows."""
        logits, owner = self._window_logits(texts)
        probs = torch.softmax(torch.from_numpy(logits) / self.temperature, dim=-1).numpy()
        return self._per_text(probs, owner, len(texts))

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """Raw logits (before temperature) per text, float32; ``chunks`` averages a text's windows.
        What calibration is fitted on."""
        logits, owner = self._window_logits(texts)
        return self._per_text(logits, owner, len(texts))

    def _per_text(self, rows: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
        if len(owner) == n:  # one window per text (always so for head and head_tail)
            return rows
        out = np.zeros((n, rows.shape[1]), dtype=np.float32)
        np.add.at(out, owner, rows)
        return out / np.bincount(owner, minlength=n)[:, None].astype(np.float32)

    @torch.inference_mode()
    def _window_logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Logits per window (float32) and the text each belongs to.

        Texts are tokenised once, sorted by length and cut into chunks whose padding stays small:
        on CPU the cost of a forward pass is proportional to the padded tokens, so one long text
        must not make fifteen short ones pay for its length. A text longer than ``max_length``
        tokens is seen through ``text_windows`` (one row per window).
        """
        if not texts:
            return np.empty((0, len(self.labels)), dtype=np.float32), np.empty(0, dtype=np.int64)
        with self._lock:
            rows, owner = self._encode(list(texts))
            out = np.empty((len(owner), len(self.labels)), dtype=np.float32)
            for chunk in length_chunks([len(x) for x in rows["input_ids"]], self.batch_size):
                batch = {k: [rows[k][i] for i in chunk] for k in rows}
                if self.onnx is not None:
                    logits = torch.from_numpy(self.onnx(self.tokenizer.pad(batch, return_tensors="np")))
                else:
                    logits = self.model(**self.tokenizer.pad(batch, return_tensors="pt").to(self.device)).logits
                out[chunk] = logits.float().cpu().numpy()
        return out, owner

    def _encode(self, texts: list[str]) -> tuple[dict[str, list[list[int]]], np.ndarray]:
        """Model inputs, one row per window, and the index of the text each row belongs to.

        The common case is one truncating tokenizer call on at most ``CHARS_PER_WINDOW`` characters
        per text (tokenising all 100,000 characters of a long text took ~80 ms under the model's
        lock). A text that filled its window is then cut into the strategy's window(s) as text and
        tokenised again, so the tokenizer adds its own special tokens, type ids and masks.
        """
        cut = self.max_length * CHARS_PER_WINDOW
        enc = self.tokenizer([t[:cut] for t in texts], truncation=True, max_length=self.max_length)
        keys = list(enc.keys())
        rows = {k: list(enc[k]) for k in keys}
        owner = list(range(len(texts)))
        long = [i for i, ids in enumerate(rows["input_ids"]) if len(ids) >= self.max_length or len(texts[i]) > cut]
        if not long or (self.long_text == "head" and all(len(rows["input_ids"][i]) >= self.max_length
                                                        for i in long)):
            return rows, np.asarray(owner)
        body = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        parts = [(i, w) for i in long for w in self._window_texts(texts[i], body)]
        again = self.tokenizer([w for _, w in parts], truncation=True, max_length=self.max_length)
        seen: set[int] = set()
        for j, (i, _) in enumerate(parts):
            if i not in seen:  # a text's first window replaces its truncated row
                seen.add(i)
                for k in keys:
                    rows[k][i] = again[k][j]
                continue
            owner.append(i)
            for k in keys:
                rows[k].append(again[k][j])
        return rows, np.asarray(owner)

    def _window_texts(self, text: str, body: int) -> list[str]:
        """The strategy's windows of ``text`` as text (ranges joined by a space)."""
        if self.long_text == "chunks":
            offsets, _ = self._offsets(text)
        else:  # head and head_tail need only the text's two ends
            head = body if self.long_text == "head" else (body + 1) // 2
            offsets, whole = self._offsets(text, first=head + 1)
            if not whole and self.long_text == "head_tail":
                tail = self._offsets(text, last=body - head + 1)[0][-(body - head):]
                if tail[0][0] < offsets[head - 1][1]:  # the ends overlap: the text fits in one window
                    offsets, _ = self._offsets(text)
                else:
                    return [text[:offsets[head - 1][1]] + " " + text[tail[0][0]:]]
            elif not whole:
                return [text[:offsets[head - 1][1]]]
        windows = text_windows(len(offsets), body, self.long_text)
        return [" ".join(text[offsets[a][0]:offsets[b - 1][1]] for a, b in w if b > a) or text[:1] for w in windows]

    def _offsets(self, text: str, *, first: int = 0, last: int = 0) -> tuple[list[tuple[int, int]], bool]:
        """Character offsets of the text's tokens: all of them, or at least its ``first`` (``last``)
        ones, tokenising a growing prefix (suffix). True when they cover the whole text."""
        need = first or last
        size = max(need * CHARS_PER_WINDOW // 4, 256) if need else len(text)
        while True:
            start = 0 if size >= len(text) or first or not need else len(text) - size
            part = text[start:start + size]
            offsets = self.tokenizer(part, add_special_tokens=False, return_offsets_mapping=True,
                                     verbose=False)["offset_mapping"]
            whole = start + size >= len(text) and start == 0
            if whole or len(offsets) > need:  # one spare: the token at the cut may be part of a word
                return [(a + start, b + start) for a, b in offsets], whole
            size *= 4

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """(label, confidence) per text."""
        probs = self.predict_proba(texts)
        return [(self.labels[int(p.argmax())], float(p.max())) for p in probs]

    def warm_up(self) -> None:
        """Run a few forward passes so the first real request does not pay for lazy initialisation."""
        self.predict_proba(["warm up", "a somewhat longer sentence to warm up the model " * 4])
        self.predict_proba(["x"] * min(self.batch_size, 8))

    def __repr__(self) -> str:
        return (f"LoadedModel(version={self.version!r}, labels={self.labels}, max_length={self.max_length}, "
                f"temperature={self.temperature:g})")
