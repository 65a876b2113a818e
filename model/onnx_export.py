"""Serve a model through ONNX Runtime on CPU: exported and (optionally) int8-quantised once.

On this project's 2-core reference machine ONNX Runtime's int8 MiniLM runs ~1.5x faster than torch's
dynamic int8 quantisation (and its fp32 ~1.6x faster than torch fp32), mostly because its kernels
use both cores where torch's quantised Linear does not. Exporting and quantising takes most of a
cold load (~7 s of CPU on 2 cores), so it happens once per version: a retrain job packages the
promoted version's graph (``package_serving_graph``, in the version's ``onnx/`` folder), a replica
opens a packaged graph instead of exporting, and exports itself only for a version that has none
(the first seed model, a model trained outside a job), keeping that graph in its model cache.
Before any graph serves, its probabilities are checked against torch's on a few texts; a model
that disagrees beyond quantisation noise (or fails to export) is served by torch instead.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECK_TEXTS = [
    "warm up",
    "oil prices rose sharply after the cartel agreed to cut output",
    "the bank raised its key interest rate by half a point to defend the currency " * 3,
]


log = logging.getLogger(__name__)


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


SERVING_GRAPH_DIR = "onnx"
"""The folder of a model directory that holds its packaged serving graph (``package_serving_graph``)."""


def graph_name(quantize: bool) -> str:
    return "model.int8.onnx" if quantize else "model.onnx"


def export_onnx(model: Any, tokenizer: Any, *, quantize: bool, threads: int = 0,
                max_int8_diff: float = 0.25, cache_dir: Path | None = None,
                packaged_dir: Path | None = None, weights: Callable[[], str | None] | None = None) -> OnnxLogits:
    """Export ``model`` (an HF sequence classifier on CPU) to an ONNX Runtime session.

    Two checks against torch on ``CHECK_TEXTS``: the fp32 graph must match to 1e-3 (a broken export
    is refused outright); the int8 one within ``max_int8_diff`` of a probability, a bound on
    quantisation noise (per-channel weights: measured <= 0.14 on 200 Reuters texts with a fine-tuned
    MiniLM, 99.5% identical labels; per-tensor, like torch's dynamic int8, reached 0.7-0.9).

    ``packaged_dir`` (read only: the graph a retrain job shipped with the version) is tried first,
    then ``cache_dir`` (a model version's own folder): the checked graph is kept there and the next
    load of that version opens it instead of exporting and quantising again (most of a cold load).
    Either is still checked against torch; a graph that fails to open or to agree is exported afresh.
    ``weights`` (the model directory's ``weights_digest``, computed only when needed) binds a kept
    graph to the weights it was made from: its stored reference probabilities stand in for torch's
    only when the digest matches, so a graph left beside other weights is checked against torch.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:  # an optional speed-up: torch still serves
        raise OnnxExportError(f"onnxruntime is not installed: {exc}") from exc

    sample = tokenizer(CHECK_TEXTS[:2], padding=True, return_tensors="pt")
    accepted = inspect.signature(model.forward).parameters
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample and k in accepted]
    wrapper = _LogitsOnly(model, names).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # no busy-waiting between ops: the event loop and tokenizer need the same few cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    cached = cache_dir / graph_name(quantize) if cache_dir else None
    packaged = packaged_dir / graph_name(quantize) if packaged_dir else None
    # each at most once per load, whichever of the graphs below needs it: hashing the weights and
    # torch's forward pass are the two costs a ready graph exists to avoid
    weights = functools.cache(weights) if weights else None
    torch_reference = functools.cache(lambda: _torch_probabilities(model, tokenizer, names))
    for ready in (packaged, cached):
        if ready is None or not ready.exists():
            continue
        try:
            logits = OnnxLogits(ort.InferenceSession(str(ready), options, providers=["CPUExecutionProvider"]),
                                names, quantized=quantize)
            expected = _stored_reference(ready, weights() if weights else None)
            if expected is None:
                expected = torch_reference()
            _check_agreement(expected, tokenizer, logits, max_int8_diff if quantize else 1e-3)
            return logits
        except Exception as exc:  # noqa: BLE001 - a damaged or stale graph is only a slower load
            log.warning("ONNX graph %s not used (%s); exporting again", ready, exc)
            if ready == cached:
                cached.unlink(missing_ok=True)  # a packaged graph is the registry's: left as it is
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
            logits = OnnxLogits(ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"]),
                                names, quantized=False)
        except Exception as exc:  # noqa: BLE001 - any exporter/runtime failure means "serve with torch"
            raise OnnxExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
        expected = torch_reference()
        _check_agreement(expected, tokenizer, logits, 1e-3)
        if not quantize:
            _keep(fp32, cached, expected, weights)
            return logits
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with _quiet_quantizer():
                quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
            logits = OnnxLogits(ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"]),
                                names, quantized=True)
        except Exception as exc:  # noqa: BLE001
            raise OnnxExportError(f"ONNX int8 quantisation failed: {type(exc).__name__}: {exc}") from exc
        _check_agreement(expected, tokenizer, logits, max_int8_diff)
        _keep(int8, cached, expected, weights)
    return logits


class _QuantizerChatter(logging.Filter):
    """Drops what ONNX Runtime's quantiser logs straight on the root logger (a line per tensor, advice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "/onnxruntime/quantization/" not in record.pathname.replace(os.sep, "/")


_CHATTER = _QuantizerChatter()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence the quantiser only. ``logging.disable`` did it process-wide: every thread's records up
    to WARNING were dropped while a model quantised, and a replica loading several models lost its
    other stages' logs (a review worker's "owns partitions" line, in the test suite)."""
    package = logging.getLogger("onnxruntime.quantization")
    level = package.level
    root = logging.getLogger()
    root.addFilter(_CHATTER)
    package.setLevel(logging.ERROR)
    try:
        yield
    finally:
        package.setLevel(level)
        root.removeFilter(_CHATTER)


def package_serving_graph(model_dir: str | Path, *, quantize: bool) -> Path:
    """Export, quantise and check ``model_dir``'s serving graph into its ``onnx/`` folder, once, so that
    no replica repeats that work when it loads the version. Raises ``OnnxExportError`` (the model
    then serves with torch, as a failed export at load time would)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from model.format import weights_digest

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    out = Path(model_dir) / SERVING_GRAPH_DIR
    export_onnx(model, tokenizer, quantize=quantize, cache_dir=out, weights=lambda: weights_digest(model_dir))
    graph = out / graph_name(quantize)
    if not graph.exists():
        raise OnnxExportError(f"the checked graph could not be written to {graph}")
    return graph


def _reference_path(graph: Path) -> Path:
    return graph.with_name(f"{graph.name}.reference.json")


def _stored_reference(graph: Path, weights: str | None) -> torch.Tensor | None:
    """Torch's probabilities on ``CHECK_TEXTS`` for the weights ``graph`` was made from, kept beside it:
    checking a ready graph against them skips a torch forward pass, the largest part of a cold load
    once the graph is packaged (``bench/tenants.py --profile``). None when absent, made for other texts, or made
    from other weights than ``weights`` (a digest; None never matches)."""
    if weights is None:
        return None
    try:
        ref = json.loads(_reference_path(graph).read_text())
        if ref.get("texts") == CHECK_TEXTS and ref.get("weights") == weights:
            return torch.tensor(ref["probabilities"], dtype=torch.float32)
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def _keep(graph: Path, cached: Path | None, expected: torch.Tensor,
          weights: Callable[[], str | None] | None) -> None:
    """Copy a checked graph into the cache atomically (replicas sharing a cache never read half a file),
    its torch reference first, bound to the weights' digest (without one, the graph is checked
    against torch at every load)."""
    if cached is None:
        return
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        reference = _reference_path(cached)
        digest = weights() if weights else None
        if digest is None:
            reference.unlink(missing_ok=True)
        else:
            partial_ref = reference.with_name(f".{reference.name}.{os.getpid()}.partial")
            partial_ref.write_text(json.dumps({"texts": CHECK_TEXTS, "weights": digest,
                                               "probabilities": expected.tolist()}))
            partial_ref.replace(reference)
        partial = cached.with_name(f".{cached.name}.{os.getpid()}.partial")
        shutil.copyfile(graph, partial)
        partial.replace(cached)
    except OSError as exc:  # a read-only model folder: serve anyway, export again next time
        log.warning("could not cache the ONNX graph at %s: %s", cached, exc)


def _check_batch(tokenizer: Any) -> Any:
    return tokenizer(CHECK_TEXTS, padding=True, truncation=True, max_length=128, return_tensors="np")


def _torch_probabilities(model: Any, tokenizer: Any, names: list[str]) -> torch.Tensor:
    """The reference both checks compare against, computed once."""
    enc = _check_batch(tokenizer)
    with torch.inference_mode():
        return torch.softmax(model(**{k: torch.from_numpy(enc[k]) for k in names}).logits, -1)


def _check_agreement(expected: torch.Tensor, tokenizer: Any, logits: OnnxLogits, max_abs_diff: float) -> None:
    got = torch.softmax(torch.from_numpy(logits(_check_batch(tokenizer))), -1)
    diff = float((expected - got).abs().max())
    if diff > max_abs_diff:
        kind = "int8" if logits.quantized else "fp32"
        raise OnnxExportError(f"the exported {kind} model's probabilities differ from torch's by {diff:.3f} "
                              f"(allowed {max_abs_diff})")


class _LogitsOnly(torch.nn.Module):
    """Positional tensors in, logits out: the shape torch.onnx.export traces best."""

    def __init__(self, model: Any, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: Any) -> Any:
        return self.model(**dict(zip(self.names, tensors, strict=True))).logits
