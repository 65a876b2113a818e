"""Micro-batching: concurrent requests share one forward pass.

A single loop owns the model. It takes whatever is queued the moment the model is free (up to
``max_batch``), waiting at most ``max_wait_s`` for company only when it would otherwise run a
batch of one — so batching adds throughput under load without adding latency when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Item(Generic[T, R]):
    payload: T
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[T, R]):
    """Group single items into batches for ``run_batch(list[T]) -> list[R]``, run in ``executor``."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        executor: Executor,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item[T, R]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches_run = 0
        self.batch_failures = 0  # batches that failed as a whole and were retried item by item

    def _ensure_started(self) -> asyncio.Queue[_Item[T, R]]:
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return self._queue

    async def submit_many(self, payloads: list[T]) -> list[R]:
        queue = self._ensure_started()
        loop = asyncio.get_running_loop()
        items = [_Item(p, loop.create_future()) for p in payloads]
        for item in items:
            queue.put_nowait(item)
        return list(await asyncio.gather(*(i.future for i in items)))

    async def _collect(self, queue: asyncio.Queue[_Item[T, R]]) -> list[_Item[T, R]]:
        batch = [await queue.get()]
        while len(batch) < self.max_batch and not queue.empty():
            batch.append(queue.get_nowait())
        if len(batch) == 1 and self.max_wait_s > 0:
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
        return batch

    async def _loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(queue)
            batch = [i for i in batch if not i.future.done()]  # cancelled by a disconnected client
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [i.payload for i in batch])
            except Exception as exc:
                if len(batch) == 1:  # the waiter learns why; the loop lives on
                    _settle(batch[0], exc)
                else:  # one bad payload must not fail its neighbours: each alone, only the bad one fails
                    self.batch_failures += 1
                    for item in batch:
                        await self._run_alone(loop, item)
                continue
            self.batches_run += 1
            if self.on_batch:
                self.on_batch(len(batch), time.perf_counter() - started)
            for item, result in zip(batch, results, strict=True):
                _settle(item, result)

    async def _run_alone(self, loop: asyncio.AbstractEventLoop, item: _Item[T, R]) -> None:
        if item.future.done():
            return
        try:
            (result,) = await loop.run_in_executor(self.executor, self.run_batch, [item.payload])
        except Exception as exc:
            _settle(item, exc)
        else:
            _settle(item, result)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


def _settle(item: _Item[T, R], outcome: R | Exception) -> None:
    """Resolve a waiter unless it is gone (a disconnected client cancelled it)."""
    if item.future.done():
        return
    if isinstance(outcome, Exception):
        item.future.set_exception(outcome)
    else:
        item.future.set_result(outcome)
