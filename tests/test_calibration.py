"""Temperature scaling: fitted on held-out rows at training, stored in the model meta, applied by
both runtimes; the report shows expected calibration error before and after."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model.calibration import expected_calibration_error, fit_temperature, softmax
from model.data import LabeledText
from model.format import MODEL_META
from model.runtime import LoadedModel
from tests.model_fixtures import TINY_LABELS, tiny_spec, topic_rows


def _y(model: LoadedModel, rows: list[LabeledText]) -> np.ndarray:
    return np.asarray([model.labels.index(r.label) for r in rows])


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory):
    """The tiny model trained on 30 % rotated labels: it makes held-out errors, so a scale can be fitted."""
    from model.train import fine_tune

    rotate = dict(zip(TINY_LABELS, TINY_LABELS[1:] + TINY_LABELS[:1], strict=True))
    rng = random.Random(0)
    rows = [LabeledText(text=r.text, label=rotate[r.label] if rng.random() < 0.3 else r.label)
            for r in topic_rows(40, seed=1)]
    return fine_tune(rows, tiny_spec(epochs=4), out_dir=tmp_path_factory.mktemp("noisy") / "model",
                     eval_rows=topic_rows(15, seed=2), progress=False)


@pytest.mark.integration  # trains a noisy model of its own (~20 s): kept out of the fast lane
def test_training_fits_a_temperature_and_records_it(noisy, tmp_path):
    cal = noisy.calibration
    assert cal is not None and cal.n == 45 and cal.temperature != 1.0
    assert cal.nll_after <= cal.nll_before  # what the fit minimises, on the rows it was fitted on
    meta = json.loads((Path(noisy.model_dir) / MODEL_META).read_text())
    assert meta["temperature"] == cal.temperature and meta["calibration"]["ece_after"] == cal.ece_after
    assert noisy.metrics["ece_before"] == cal.ece_before and noisy.metrics["temperature"] == cal.temperature
    assert noisy.eval_report is not None and noisy.eval_report.ece == cal.ece_after

    from retrain.report import write_report

    written = {p.name for p in write_report(tmp_path, noisy)}
    assert {"reliability.png", "summary.md"} <= written
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    assert f"expected calibration error {cal.ece_before:.4f} -> **{cal.ece_after:.4f}**" in (
        tmp_path / "summary.md").read_text()


@pytest.mark.integration  # trains a noisy model of its own (~20 s): kept out of the fast lane
def test_a_fitted_temperature_lowers_ece_on_held_out_texts(noisy):
    """T fitted at training (45 held-out texts) measured on 150 texts the model never saw; and the
    same for an overconfident model (its calibrated logits x4, as a sharper head would give)."""
    model = LoadedModel.load(noisy.model_dir)
    assert model.temperature == noisy.calibration.temperature
    test_rows = topic_rows(50, seed=5)
    logits, y = model.predict_logits([r.text for r in test_rows]), _y(model, test_rows)
    assert (logits.argmax(axis=1) != y).any()
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(model.predict_proba([r.text for r in test_rows]), y)
    assert after < before, (before, after)

    # four times sharper than calibrated, whatever this training's own temperature came out at
    scale = 4 / noisy.calibration.temperature
    fit_rows = topic_rows(15, seed=2)
    sharp = fit_temperature(scale * model.predict_logits([r.text for r in fit_rows]), _y(model, fit_rows))
    assert sharp.temperature > 2
    before = expected_calibration_error(softmax(scale * logits), y)
    after = expected_calibration_error(softmax(scale * logits, sharp.temperature), y)
    assert after < before, (before, after)


def test_no_fit_without_evidence():
    logits = np.asarray([[4.0, 0.0, 0.0], [0.0, 5.0, 0.0]] * 10)
    assert fit_temperature(logits, np.asarray([0, 1] * 10)).temperature == 1.0  # no held-out error
    assert fit_temperature(logits[:4], np.asarray([1, 0, 1, 0])).temperature == 1.0  # too few rows


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_served_probabilities_are_softmax_of_logits_over_t(tiny_model_dir, tmp_path, tiny_examples, runtime):
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    meta = json.loads((model_dir / MODEL_META).read_text())
    (model_dir / MODEL_META).write_text(json.dumps({**meta, "temperature": 2.5}))
    served = LoadedModel.load(model_dir, runtime=runtime, quantize="none")
    assert served.temperature == 2.5 and served.backend == runtime
    texts = [*tiny_examples.values(), "rain or goals, who knows"]
    enc = served.tokenizer(texts, padding=True, truncation=True, max_length=served.max_length, return_tensors="pt")
    with torch.inference_mode():
        logits = served.model(**enc).logits.numpy()
    assert np.allclose(served.predict_proba(texts), softmax(logits, 2.5), atol=1e-3 if runtime == "onnx" else 1e-5)
    assert np.allclose(served.predict_logits(texts), logits, atol=1e-3 if runtime == "onnx" else 1e-4)
