"""The serving engine: one model slot per classifier, micro-batched inference, atomic swaps.

A batch reads ``slot.model`` once when it starts, so a swap never mixes two models in one
forward pass and never fails a request: in-flight batches finish on the old model, the next
batch runs on the new one.

Many classifiers per replica (issue 15): models load lazily on their first request, and with a
memory budget (``memory_budget_mb``, ``SIFT_MODEL_MEMORY_MB``) the least recently used resident
models are evicted once the estimated resident size of all of them exceeds it. A slot with
requests in flight is never evicted, so hot classifiers stay resident while cold ones come and
go; a request that still races an eviction reloads the model instead of failing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from classifier import metrics
from classifier.batcher import MicroBatcher
from infra.registry import derived_dir
from model.runtime import LoadedModel, LongText, Quantize, Runtime

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """No model can serve this classifier right now; the message says why (served as 503)."""


class Evicted(ModelUnavailable):
    """The slot's model was evicted between the request's load check and its batch: load it again."""


def resident_bytes(model: LoadedModel) -> int:
    """Estimated memory a loaded model holds: its torch weights, plus as much again when an ONNX
    Runtime session serves it (the session holds its own copy of the graph's weights; an int8 one
    less, so this errs high and the budget holds)."""
    torch_model = model.model
    size = sum(t.numel() * t.element_size() for t in torch_model.parameters())
    size += sum(t.numel() * t.element_size() for t in torch_model.buffers())
    if getattr(model, "onnx", None) is not None:
        size *= 2
    return int(size)


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
        self.active = 0  # requests between their load check and their answer: never evicted meanwhile
        self.evicted = False
        self.batcher: MicroBatcher[str, Scored] = MicroBatcher(
            self._run, executor, max_batch=max_batch, max_wait_s=max_wait_s, on_batch=self._observe
        )

    def _observe(self, size: int, seconds: float) -> None:
        metrics.BATCH_SIZE.labels(self.classifier).observe(size)
        metrics.INFERENCE.labels(self.classifier).observe(seconds)

    def _run(self, texts: list[str]) -> list[Scored]:
        model = self.model  # read once: the whole batch uses one model
        if model is None and self.evicted:
            raise Evicted(f"the model of classifier {self.classifier!r} was evicted")
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
        self.evicted = False
        metrics.MODEL_VERSION.labels(self.classifier).set(float(model.version) if model.version.isdigit() else -1)
        metrics.SWAPS.labels(self.classifier).inc()
        for backend in metrics.BACKENDS:
            metrics.BACKEND.labels(self.classifier, backend).set(1 if backend == model.backend else 0)


ChampionResolver = Callable[[str], tuple[str, str] | None]
"""classifier -> (version, local model dir) of its champion, or None when it has none."""

ColdStart = Callable[[str, "LoadedModel | None"], "LoadedModel | None"]
"""(classifier, what serves it now) -> a model to serve while it has no champion (label prototypes),
or None; returning what serves now keeps it."""

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
        memory_budget_mb: float = 0,
    ) -> None:
        self.resolve_champion = resolve_champion
        # 0: no budget (every classifier stays loaded); else LRU eviction above this many bytes
        self.memory_budget = int(memory_budget_mb * 1024 * 1024)
        self._resident: OrderedDict[str, int] = OrderedDict()  # classifier -> estimated bytes, LRU first
        self.evictions = 0
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
        self.cold_start: ColdStart | None = None  # set by the composition root

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
        # a version downloaded into the model cache keeps its exported ONNX graph beside it: the next
        # load of that version (after an eviction, a restart, another replica on the host) skips the
        # export and quantisation
        model = LoadedModel.load(model_dir, version=version, runtime=self.runtime, quantize=self.quantize,
                                 num_threads=self.torch_threads or None, long_text=self.long_text,
                                 onnx_cache=derived_dir(model_dir))
        model.warm_up()
        log.info("classifier %s v%s loaded (%s)", classifier, version, model.backend)
        return model

    def swap_in(self, classifier: str, model: LoadedModel) -> None:
        self.slot(classifier).swap(model)
        log.info("classifier %s now serves version %s", classifier, model.version)
        with self._lock:
            self._resident[classifier] = resident_bytes(model)
            self._resident.move_to_end(classifier)
        self._evict(keep=classifier)

    def resident(self) -> dict[str, int]:
        """Classifiers whose model is loaded, least recently used first, with their estimated bytes."""
        with self._lock:
            return dict(self._resident)

    def has_room(self) -> bool:
        """False once the resident models fill the budget (preload stops there; the rest load on demand)."""
        return not self.memory_budget or sum(self.resident().values()) < self.memory_budget

    def _touch(self, classifier: str) -> None:
        with self._lock:
            if classifier in self._resident:
                self._resident.move_to_end(classifier)

    def _evict(self, keep: str) -> None:
        """Drop least recently used idle models until the estimate fits the budget (``keep`` stays)."""
        if not self.memory_budget:
            return
        with self._lock:
            total = sum(self._resident.values())
            for name in list(self._resident):
                if total <= self.memory_budget:
                    break
                s = self.slots.get(name)
                if name == keep or s is None or s.active:
                    continue  # just loaded, or serving requests right now: a hot model stays
                total -= self._resident.pop(name)
                s.evicted = True
                s.model = None  # batches already running keep their reference and finish
                self.evictions += 1
                metrics.EVICTIONS.labels(name).inc()
                log.info("classifier %s evicted (model memory budget %d MB)", name, self.memory_budget >> 20)

    def refresh(self, classifier: str, *, load_cold: bool = True) -> str | None:
        """Load the registry's champion if it differs from what serves (blocking). Returns the version.

        ``load_cold=False`` (the model watcher and poller) leaves an evicted or never-loaded slot
        alone under a memory budget: its next request loads the champion of the moment.
        """
        if not load_cold and self.memory_budget and self.loaded_version(classifier) is None:
            return None
        with self._lock:
            lock = self._refresh_locks.setdefault(classifier, threading.Lock())
        with lock:  # the watcher, the poller and the preload never load one model twice; others load beside it
            found = self.resolve_champion(classifier)
            if found is None:
                return self._serve_cold(classifier)
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

    def _serve_cold(self, classifier: str) -> str | None:
        """No champion: the cold-start model, if the classifier has one (a trained champion replaces it)."""
        if self.cold_start is None:
            return None
        try:
            slot = self.slots.get(classifier)
            model = self.cold_start(classifier, slot.model if slot else None)
        except Exception:
            log.warning("cold-start model of %s could not be built", classifier, exc_info=True)
            return None
        if model is None:
            return None
        if self.loaded_version(classifier) != model.version:
            model.warm_up()
            self.swap_in(classifier, model)  # type: ignore[arg-type]
        return model.version

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
        for attempt in range(3):
            s = await self.ensure_loaded(classifier)
            s.active += 1  # the event loop's thread only; _evict reads it under the lock
            try:
                self._touch(classifier)
                return await s.batcher.submit_many(texts)
            except Evicted:
                if attempt == 2:
                    raise
            finally:
                s.active -= 1
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for s in list(self.slots.values()):
            await s.batcher.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.loader.shutdown(wait=False, cancel_futures=True)
