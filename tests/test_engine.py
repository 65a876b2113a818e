"""The serving engine on a real fine-tuned model: batching, swap under load, missing model."""

from __future__ import annotations

import asyncio
import threading

import pytest

from classifier.engine import ModelUnavailable, ServingEngine
from model.runtime import LoadedModel


def _engine(model_dir: str, version: str = "1", **kw) -> ServingEngine:
    return ServingEngine(lambda name: (version, model_dir), **kw)


def test_concurrent_requests_share_batches(tiny_model_dir):
    engine = _engine(str(tiny_model_dir), max_batch=32, max_wait_s=0.005)
    texts = [f"the striker scored a late goal in the match number {i}" for i in range(64)]

    async def run():
        await engine.ensure_loaded("c")
        slot = engine.slot("c")
        before = slot.batcher.batches_run
        results = await asyncio.gather(*(engine.classify("c", [t]) for t in texts))
        return results, slot.batcher.batches_run - before

    results, batches = asyncio.run(run())
    assert len(results) == 64
    # 64 single-text requests, fired together, ran in far fewer forward passes than requests
    assert batches <= 8, batches
    assert all(r[0].model_version == "1" for r in results)


def test_swap_under_load_fails_no_request(tiny_model_dir):
    engine = _engine(str(tiny_model_dir), max_batch=16, max_wait_s=0.001)
    # same weights, new version: what matters here is which version answered each request
    new_model = LoadedModel.load(str(tiny_model_dir), version="2")
    new_model.warm_up()
    seen: list[str] = []
    errors: list[BaseException] = []
    swapped = threading.Event()

    async def client(i: int) -> None:
        for j in range(25):
            try:
                out = await engine.classify("c", [f"rain and wind expected tomorrow {i} {j}"])
                seen.append(out[0].model_version)
            except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                errors.append(exc)
            if j == 8 and i == 0:
                await asyncio.get_running_loop().run_in_executor(None, engine.swap_in, "c", new_model)
                swapped.set()

    async def run():
        await engine.ensure_loaded("c")
        await asyncio.gather(*(client(i) for i in range(8)))

    asyncio.run(run())
    assert not errors
    assert swapped.is_set()
    assert len(seen) == 200
    assert "1" in seen and "2" in seen
    # one inference thread: once a request saw the new version, none sees the old one again
    first_new = seen.index("2")
    assert set(seen[first_new:]) == {"2"}


def test_missing_model_is_a_clear_error():
    engine = ServingEngine(lambda name: None)

    async def run():
        await engine.classify("nobody", ["hello"])

    with pytest.raises(ModelUnavailable, match="has no model yet"):
        asyncio.run(run())


def test_broken_model_dir_is_a_clear_error(tmp_path):
    engine = _engine(str(tmp_path / "missing"))

    async def run():
        await engine.classify("c", ["hello"])

    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        asyncio.run(run())


def test_length_chunks_bound_padding_and_cover_every_text():
    from model.runtime import length_chunks

    lengths = [128, 12, 14, 127, 60, 61, 13, 128, 59, 90, 11, 12]
    chunks = length_chunks(lengths, max_batch=4, max_waste=0.05)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) <= 4
        width = max(lengths[i] for i in chunk)
        assert 1 - sum(lengths[i] for i in chunk) / (width * len(chunk)) <= 0.05
    # one long text never shares a chunk with the short ones
    assert all(len({lengths[i] > 100 for i in c}) == 1 for c in chunks)
