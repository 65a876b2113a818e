"""Cold start: a classifier with only its labels (and optional descriptions or examples) answers at
once from label prototypes of the shipped encoder, and a trained champion replaces them."""

from __future__ import annotations

import asyncio

import pytest

from classifier.cold_start import cold_start_hook
from classifier.engine import ServingEngine
from infra.settings import resolve_base_model
from infra.tenants import ClassifierConfig
from model.prototype import prototype_model, prototype_version

TEXTS = {  # clearly separable, none says its label's name
    "sports": ["the striker scored twice and the home team won the cup final",
               "she won the tennis match in three sets at wimbledon"],
    "weather": ["heavy rain and strong winds are expected tomorrow with snow in the hills",
                "a heatwave with temperatures above forty degrees hit the south"],
    "finance": ["the bank reported record quarterly profit and its shares rose",
                "bond yields fell as investors bought government debt"],
}


def _accuracy(model) -> float:  # noqa: ANN001
    texts = [t for ts in TEXTS.values() for t in ts]
    want = [label for label, ts in TEXTS.items() for _ in ts]
    got = [label for label, _ in model.predict(texts)]
    return sum(g == w for g, w in zip(got, want, strict=True)) / len(want)


def test_label_names_alone_label_separable_texts() -> None:
    model = prototype_model(resolve_base_model(None), list(TEXTS))
    assert _accuracy(model) == 1.0
    probs = model.predict_proba(["the goalkeeper saved a penalty"])
    assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1) < 1e-5


def test_descriptions_and_examples_shape_the_prototypes_and_name_the_version() -> None:
    base = resolve_base_model(None)
    labels = ["pos", "neg"]  # names that say little on their own
    bare = prototype_model(base, labels)
    described = prototype_model(base, labels, {"pos": "a happy, glowing review: loved it, wonderful",
                                               "neg": "an angry complaint: terrible, broken, refund"},
                                {"neg": ["the product broke after a day, awful"]})
    texts = ["I loved it, wonderful experience, highly recommended", "terrible, it broke and I want a refund"]
    assert [label for label, _ in described.predict(texts)] == ["pos", "neg"]
    assert bare.version != described.version
    assert described.version == prototype_version(base, labels, {"pos": "a happy, glowing review: loved it, "
                                                                 "wonderful", "neg": "an angry complaint: "
                                                                 "terrible, broken, refund"},
                                                  {"neg": ["the product broke after a day, awful"]})


def test_bad_cold_start_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="labels the classifier does not have"):
        ClassifierConfig(name="cold", labels=["a", "b"], label_descriptions={"z": "nope"})
    with pytest.raises(ValueError, match="at most 20 per label"):
        ClassifierConfig(name="cold", labels=["a", "b"], seed_examples={"a": ["x"] * 21})
    with pytest.raises(ValueError, match="at most 20 per label"):
        ClassifierConfig(name="cold", labels=["a", "b"], seed_examples={"a": ["  "]})


class _Tenants:
    def __init__(self, *cfgs: ClassifierConfig) -> None:
        self.cfgs = {c.name: c for c in cfgs}

    def get(self, name: str) -> ClassifierConfig | None:
        return self.cfgs.get(name)


def test_the_engine_serves_prototypes_until_a_champion_exists(tiny_model_dir, tiny_examples) -> None:  # noqa: ANN001
    champion: dict[str, tuple[str, str]] = {}
    tenants = _Tenants(ClassifierConfig(name="cold", labels=list(tiny_examples)),
                       ClassifierConfig(name="off", labels=list(tiny_examples), cold_start=False))
    engine = ServingEngine(lambda name: champion.get(name))
    engine.cold_start = cold_start_hook(tenants)

    async def classify(name: str) -> list:
        return await engine.classify(name, list(tiny_examples.values()))

    cold = asyncio.run(classify("cold"))
    assert all(s.model_version.startswith("prototype-") for s in cold)
    assert [s.label for s in cold] == list(tiny_examples)
    assert engine.refresh("cold") == cold[0].model_version  # the poller's refresh keeps the same prototypes
    with pytest.raises(Exception, match="has no model yet"):
        asyncio.run(classify("off"))  # cold start switched off: no model, a clear 503

    champion["cold"] = ("1", str(tiny_model_dir))  # the first trained model is promoted
    assert engine.refresh("cold") == "1"
    assert {s.model_version for s in asyncio.run(classify("cold"))} == {"1"}
