"""Long documents: the window a model reads of a text longer than max_length, on both backends,
and the limits that let a maximum-size text travel whole (request body, broker record)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infra.events import ReviewedLabel, ReviewRequest
from infra.settings import Settings
from model.runtime import LoadedModel, text_windows
from tests.model_fixtures import FILLER, TINY_LABELS, document


@pytest.fixture(scope="module")
def models(tiny_model_dir) -> dict[str, LoadedModel]:
    base = LoadedModel.load(tiny_model_dir, version="1")
    return {s: LoadedModel(base.model, base.tokenizer, base.labels, max_length=base.max_length, long_text=s)
            for s in ("head", "head_tail", "chunks")}


def test_windows_cover_head_tail_or_the_whole_text():
    assert text_windows(10, 30, "head_tail") == [[(0, 10)]]  # short: the whole text, whatever the strategy
    assert text_windows(100, 30, "head") == [[(0, 30)]]
    assert text_windows(100, 30, "head_tail") == [[(0, 15), (85, 100)]]
    assert text_windows(100, 30, "chunks") == [[(0, 30)], [(30, 60)], [(60, 90)], [(90, 100)]]
    spread = text_windows(30 * 1000, 30, "chunks", max_chunks=5)
    assert [w[0] for w in spread] == [(0, 30), (7500, 7530), (15000, 15030), (22470, 22500), (29970, 30000)]


def test_head_tail_classifies_a_long_document_by_its_end(models, tiny_examples):
    docs = {label: document(text) for label, text in tiny_examples.items()}
    assert all(len(d) == 60_000 for d in docs.values())
    got = models["head_tail"].predict(list(docs.values()))
    assert [label for label, _ in got] == list(docs), got
    # the head strategy never sees the end: each document scores exactly like its filler alone
    head = models["head"].predict_proba(list(docs.values()))
    assert np.allclose(head, models["head"].predict_proba([FILLER * 10] * 3), atol=1e-5)


def test_long_and_short_texts_batch_together_in_input_order(models, tiny_examples):
    texts = [tiny_examples["sports"], document(tiny_examples["weather"], 5_000), "rain", document("goal", 3_000)]
    for model in models.values():
        together = model.predict_proba(texts)
        alone = np.vstack([model.predict_proba([t]) for t in texts])
        assert together.shape == (4, len(TINY_LABELS)) and np.allclose(together, alone, atol=1e-4)
        assert np.allclose(together.sum(axis=1), 1, atol=1e-5)


def test_chunks_average_the_probabilities_of_every_window(models, tiny_examples):
    model = models["chunks"]
    doc = " ".join([tiny_examples["sports"]] * 6 + [tiny_examples["weather"]] * 2)
    body = model.max_length - model.tokenizer.num_special_tokens_to_add(pair=False)
    windows = model._window_texts(doc, body)
    assert len(windows) >= 4
    per_window = models["head"].predict_proba(windows)
    assert np.allclose(model.predict_proba([doc])[0], per_window.mean(axis=0), atol=1e-4)
    assert model.predict([doc])[0][0] == "sports"


def test_onnx_runtime_reads_the_same_window(tiny_model_dir, models, tiny_examples):
    onnx = LoadedModel.load(tiny_model_dir, runtime="onnx", quantize="none", long_text="head_tail")
    assert onnx.backend == "onnx"
    docs = [document(text) for text in tiny_examples.values()]
    assert np.allclose(onnx.predict_proba(docs), models["head_tail"].predict_proba(docs), atol=1e-3)


def test_a_maximum_size_text_fits_the_body_limit_and_a_broker_record():
    s = Settings()
    assert s.max_text_chars == 100_000 and s.long_text_strategy == "head_tail"
    worst_utf8 = "\U0001f600" * s.max_text_chars  # 4 bytes each in UTF-8
    worst_json = "\x01" * s.max_text_chars  # 6 bytes each as a JSON escape
    for text in (worst_utf8, worst_json):
        body = json.dumps({"text": text}).encode()  # what a client sends (ASCII-escaped: the larger form)
        assert len(body) < s.max_body_bytes
        scores = {f"label-{i:03d}": 0.005 for i in range(200)}  # the most labels a classifier may have
        request = ReviewRequest(classifier="c" * 63, text=text, predicted_label="label-000", confidence=0.3,
                                scores=scores, model_version="12", source="low_confidence",
                                prediction_id="f" * 32)
        label = ReviewedLabel(classifier="c" * 63, text=text, label="label-001", reviewer="r@example.com",
                              review_task_id=1, source="low_confidence", predicted_label="label-000")
        for event in (request, label):
            assert len(event.to_bytes()) + len(event.key()) < s.kafka_max_record_bytes
            assert type(event).model_validate_json(event.to_bytes()).text == text  # nothing cut
