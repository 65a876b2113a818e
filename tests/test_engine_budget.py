"""Many classifiers on one replica (issue 15): lazy loads and LRU eviction by a memory budget, on a
real fine-tuned model. Three classifiers with a budget for two: each classifies correctly, at most
two models are resident at any time, and a classifier in use is never the one evicted."""

from __future__ import annotations

import asyncio

from classifier.engine import ServingEngine, resident_bytes
from tests.model_fixtures import TINY_EXAMPLES


def _budget_engine(model_dir: str, models: float) -> ServingEngine:
    """An engine whose memory budget holds ``models`` copies of the tiny model (by the engine's estimate)."""
    one = resident_bytes(ServingEngine(lambda n: None).load_model("probe", "1", model_dir))
    return ServingEngine(lambda name: ("1", model_dir), memory_budget_mb=models * one / 2**20)


def _loaded(engine: ServingEngine) -> set[str]:
    return {name for name, s in engine.slots.items() if s.model is not None}


def test_budget_for_two_models_serves_three_classifiers_with_at_most_two_resident(tiny_model_dir) -> None:
    engine = _budget_engine(str(tiny_model_dir), 2.5)

    async def run() -> list[set[str]]:
        resident_after = []
        for name in ["a", "b", "c", "a", "c", "b"]:  # every step after the second loads or evicts
            for label, text in TINY_EXAMPLES.items():
                [scored] = await engine.classify(name, [text])
                assert scored.label == label, (name, text, scored)
            resident_after.append(_loaded(engine))
            assert set(engine.resident()) == _loaded(engine)
        return resident_after

    resident_after = asyncio.run(run())
    assert all(len(r) <= 2 for r in resident_after), resident_after
    # LRU: c evicts a (b was used after it), a evicts b, c is resident (touched), b evicts a
    assert resident_after == [{"a"}, {"a", "b"}, {"b", "c"}, {"a", "c"}, {"a", "c"}, {"b", "c"}]
    assert engine.evictions == 3


def test_a_hot_classifier_keeps_its_model_while_cold_ones_come_and_go(tiny_model_dir) -> None:
    engine = _budget_engine(str(tiny_model_dir), 2.5)
    text, label = TINY_EXAMPLES["sports"], "sports"

    async def run() -> tuple[int, list[str]]:
        await engine.classify("hot", [text])
        hot_model = engine.slots["hot"].model
        answers: list[str] = []
        stop = asyncio.Event()

        async def hot_traffic() -> None:
            while not stop.is_set():
                [scored] = await engine.classify("hot", [text])
                answers.append(scored.label)
                assert engine.slots["hot"].model is hot_model  # never evicted, never reloaded
                await asyncio.sleep(0)

        traffic = asyncio.create_task(hot_traffic())
        try:
            for name in ["cold1", "cold2", "cold3", "cold1"]:  # each a load that must evict another
                [scored] = await engine.classify(name, [TINY_EXAMPLES["weather"]])
                assert scored.label == "weather"
                assert len(_loaded(engine)) <= 2 and "hot" in _loaded(engine)
        finally:
            stop.set()
            await traffic
        return engine.evictions, answers

    evictions, answers = asyncio.run(run())
    assert evictions == 3  # cold1 by cold2, cold2 by cold3, cold3 by cold1: never the hot one
    assert answers and set(answers) == {label}
