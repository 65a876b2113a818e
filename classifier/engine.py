"""The serving engine: one model slot per classifier, micro-batched inference, atomic swaps.

A batch reads ``slot.model`` once when it starts, so a swap never mixes two models in one
forward pass and never fails a request: in-flight batches finish on the old model, the next
batch runs on the new one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from classifier import metrics
from classifier.batcher import MicroBatcher
from model.runtime import LoadedModel, LongText, Quantize, Runtime

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """No model can serve this classifier right now; the message says why (served as 503)."""


@dataclass(frozen=True)
class Scored:
    label: str
    confidence: float
    scores: dict[str, float]
    model_version: str


class ModelSlot:
    def __init__(self, classifier: str, executor: ThreadPoolExecutor, max_batch: int, max_wait_s: float) -> None:
        self.classifier = classifier
        self.model: LoadedModel | None = None
        self.batcher: MicroBatcher[str, Scored] = MicroBatcher(
            self._run, executor, max_batch=max_batch, max_wait_s=max_wait_s, on_batch=self._observe
        )

    def _observe(self, size: int, seconds: float) -> None:
        metrics.BATCH_SIZE.labels(self.classifier).observe(size)
        metrics.INFERENCE.labels(self.classifier).observe(seconds)

    def _run(self, texts: list[str]) -> list[Scored]:
        model = self.model  # read once: the whole batch uses one model
        if model is None:
            raise ModelUnavailable(f"no model loaded for classifier {self.classifier!r}")
        probs = np.asarray(model.predict_proba(texts))
        out = []
        for row in probs:
            top = int(row.argmax())
            out.append(
                Scored(
                    label=model.labels[top],
                    confidence=float(row[top]),
                    scores={label: float(p) for label, p in zip(model.labels, row, strict=True)},
                    model_version=model.version,
                )
            )
        return out

    def swap(self, model: LoadedModel) -> None:
        self.model = model  # a single reference assignment: atomic under the GIL
        metrics.MODEL_VERSION.labels(self.classifier).set(float(model.version) if model.version.isdigit() else -1)
        metrics.SWAPS.labels(self.classifier).inc()
        for backend in metrics.BACKENDS:
            metrics.BACKEND.labels(self.classifier, backend).set(1 if backend == model.backend else 0)


ChampionResolver = Callable[[str], tuple[str, str] | None]
"""classifier -> (version, local model dir) of its champion, or None when it has none."""

LoadFailureHook = Callable[[str, str, BaseException], None]
"""(classifier, version, error) of a champion that could not be loaded: the composition root alerts."""


class ServingEngine:
    def __init__(
        self,
        resolve_champion: ChampionResolver,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        torch_threads: int = 0,
        quantize: Quantize = "none",
        runtime: Runtime = "torch",
        long_text: LongText = "head_tail",
    ) -> None:
        self.resolve_champion = resolve_champion
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        # one inference thread: torch already spreads a forward pass over the cores
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self.torch_threads = torch_threads
        self.quantize = quantize
        self.runtime = runtime
        self.long_text: LongText = long_text
        self.slots: dict[str, ModelSlot] = {}
        self._lock = threading.Lock()
        self._refresh_locks: dict[str, threading.Lock] = {}
        # ONNX export and warm-up are CPU-bound, and torch's export is not thread-safe: one load at a time
        self._load_lock = threading.Lock()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self.on_load_failure: LoadFailureHook | None = None

    def slot(self, classifier: str) -> ModelSlot:
        with self._lock:
            s = self.slots.get(classifier)
            if s is None:
                s = ModelSlot(classifier, self.executor, self.max_batch, self.max_wait_s)
                self.slots[classifier] = s
            return s

    def loaded_version(self, classifier: str) -> str | None:
        s = self.slots.get(classifier)
        return s.model.version if s and s.model else None

    def load_model(self, classifier: str, version: str, model_dir: str) -> LoadedModel:
        """Load and warm a model on the configured backend (blocking; runs beside serving, not in its way)."""
        model = LoadedModel.load(model_dir, version=version, runtime=self.runtime, quantize=self.quantize,
                                 num_threads=self.torch_threads or None, long_text=self.long_text)
        model.warm_up()
        log.info("classifier %s v%s loaded (%s)", classifier, version, model.backend)
        return model

    def swap_in(self, classifier: str, model: LoadedModel) -> None:
        self.slot(classifier).swap(model)
        log.info("classifier %s now serves version %s", classifier, model.version)

    def refresh(self, classifier: str) -> str | None:
        """Load the registry's champion if it differs from what serves (blocking). Returns the version."""
        with self._lock:
            lock = self._refresh_locks.setdefault(classifier, threading.Lock())
        with lock:  # the watcher, the poller and the preload never load one model twice; others load beside it
            found = self.resolve_champion(classifier)
            if found is None:
                return None
            version, model_dir = found
            if self.loaded_version(classifier) != version:
                try:
                    with self._load_lock:
                        model = self.load_model(classifier, version, model_dir)
                except Exception as exc:
                    metrics.LOAD_FAILURES.labels(classifier).inc()  # alerting: the champion is not served here
                    if self.on_load_failure is not None:
                        self.on_load_failure(classifier, version, exc)
                    raise
                self.swap_in(classifier, model)
            return version

    async def ensure_loaded(self, classifier: str) -> ModelSlot:
        s = self.slot(classifier)
        if s.model is not None:
            return s
        loop = asyncio.get_running_loop()
        fut = self._loading.get(classifier)
        if fut is None:
            fut = loop.run_in_executor(self.loader, self.refresh, classifier)
            self._loading[classifier] = fut
        try:
            version = await asyncio.shield(fut)
        except Exception as exc:
            raise ModelUnavailable(f"model for classifier {classifier!r} could not be loaded: {exc}") from exc
        finally:
            if fut.done():
                self._loading.pop(classifier, None)
        if version is None or s.model is None:
            raise ModelUnavailable(
                f"classifier {classifier!r} has no model yet: train one with `sift train {classifier} --data FILE`"
            )
        return s

    async def classify(self, classifier: str, texts: list[str]) -> list[Scored]:
        s = await self.ensure_loaded(classifier)
        return await s.batcher.submit_many(texts)

    async def aclose(self) -> None:
        for s in list(self.slots.values()):
            await s.batcher.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.loader.shutdown(wait=False, cancel_futures=True)
