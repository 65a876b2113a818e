"""Serve a model through ONNX Runtime on CPU: exported and (optionally) int8-quantised at load time.

On this project's 2-core reference machine ONNX Runtime's int8 MiniLM runs ~1.5x faster than torch's
dynamic int8 quantisation (and its fp32 ~1.6x faster than torch fp32), mostly because its kernels
use both cores where torch's quantised Linear does not. The export happens when a replica loads a
version (a few seconds, before the swap), so the registry keeps one artifact format: HF weights.
Before an exported model serves, its probabilities are checked against torch's on a few texts; a
model that disagrees (or fails to export) is served by torch instead, never wrong.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECK_TEXTS = [
    "warm up",
    "oil prices rose sharply after the cartel agreed to cut output",
    "the bank raised its key interest rate by half a point to defend the currency " * 3,
]


class OnnxExportError(RuntimeError):
    """The model could not be exported, or the exported graph disagrees with torch."""


class OnnxLogits:
    """An ONNX Runtime session that maps a padded tokenizer batch (numpy) to logits."""

    def __init__(self, session: Any, input_names: list[str], quantized: bool) -> None:
        self.session = session
        self.input_names = input_names
        self.quantized = quantized

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in self.input_names}
        return self.session.run(None, feed)[0]


def export_onnx(model: Any, tokenizer: Any, *, quantize: bool, threads: int = 0,
                max_abs_diff: float = 0.05) -> OnnxLogits:
    """Export ``model`` (an HF sequence classifier on CPU) to an ONNX Runtime session."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # an optional speed-up: torch still serves
        raise OnnxExportError(f"onnxruntime is not installed: {exc}") from exc

    sample = tokenizer(CHECK_TEXTS[:2], padding=True, return_tensors="pt")
    accepted = inspect.signature(model.forward).parameters
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample and k in accepted]
    wrapper = _LogitsOnly(model, names).eval()
    with tempfile.TemporaryDirectory(prefix="sift-onnx-") as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper, tuple(sample[k] for k in names), str(fp32), input_names=names,
                    output_names=["logits"], opset_version=17, dynamo=False,
                    dynamic_axes={**{k: {0: "batch", 1: "tokens"} for k in names}, "logits": {0: "batch"}},
                )
            path = fp32
            if quantize:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                logging.disable(logging.WARNING)  # the quantiser logs a line per tensor and advice on the root logger
                try:
                    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
                finally:
                    logging.disable(logging.NOTSET)
                path = int8
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # no busy-waiting between ops: the event loop and tokenizer need the same few cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any exporter/runtime failure means "serve with torch"
            raise OnnxExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    logits = OnnxLogits(session, names, quantize)
    _check_agreement(model, tokenizer, logits, max_abs_diff)
    return logits


def _check_agreement(model: Any, tokenizer: Any, logits: OnnxLogits, max_abs_diff: float) -> None:
    enc = tokenizer(CHECK_TEXTS, padding=True, truncation=True, max_length=128, return_tensors="np")
    with torch.inference_mode():
        expected = torch.softmax(model(**{k: torch.from_numpy(enc[k]) for k in logits.input_names}).logits, -1)
    got = torch.softmax(torch.from_numpy(logits(enc)), -1)
    diff = float((expected - got).abs().max())
    if diff > max_abs_diff:
        raise OnnxExportError(f"the exported model's probabilities differ from torch's by {diff:.3f}")


class _LogitsOnly(torch.nn.Module):
    """Positional tensors in, logits out: the shape torch.onnx.export traces best."""

    def __init__(self, model: Any, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: Any) -> Any:
        return self.model(**dict(zip(self.names, tensors, strict=True))).logits
