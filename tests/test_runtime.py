"""Model runtime on a real fine-tuned model: predictions, batching invariants, errors, import weight."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from model.format import ModelLoadError
from model.runtime import LoadedModel
from tests.model_fixtures import TINY_LABELS


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> LoadedModel:
    m = LoadedModel.load(tiny_model_dir, version="7")
    m.warm_up()
    return m


def test_loads_labels_version_and_max_length(model):
    assert model.labels == TINY_LABELS and model.version == "7" and model.max_length == 32
    assert "LoadedModel(version='7'" in repr(model)


def test_predicts_obvious_examples(model, tiny_examples):
    probs = model.predict_proba(list(tiny_examples.values()))
    assert probs.shape == (3, 3) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert [model.labels[i] for i in probs.argmax(axis=1)] == list(tiny_examples)
    assert probs.max(axis=1).min() > 0.8
    assert model.predict(["snow and freezing fog tonight"])[0][0] == "weather"


def test_batching_and_length_sorting_keep_input_order(model, tiny_examples):
    texts = [
        "rain",
        "the striker scored a stunning late goal in the final " * 20,  # far past max_length: truncated
        *tiny_examples.values(),
        "",
    ]
    together = model.predict_proba(texts)
    alone = np.vstack([model.predict_proba([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-4)
    small = LoadedModel(model.model, model.tokenizer, model.labels, batch_size=2, max_length=32)
    assert np.allclose(small.predict_proba(texts), together, atol=1e-4)
    assert model.predict_proba([]).shape == (0, 3)


def test_concurrent_callers(model, tiny_examples):
    texts = list(tiny_examples.values())
    expected = model.predict_proba(texts)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                assert np.allclose(model.predict_proba(texts), expected, atol=1e-5)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_not_a_model_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="sift_model.json is missing"):
        LoadedModel.load(tmp_path)
    (tmp_path / "sift_model.json").write_text('{"labels": ["a", "b"]}')
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        LoadedModel.load(tmp_path)
    (tmp_path / "sift_model.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="invalid JSON"):
        LoadedModel.load(tmp_path)


def test_label_count_mismatch(tmp_path, tiny_model_dir):
    import shutil

    bad = tmp_path / "m"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "sift_model.json").write_text('{"labels": ["a", "b"], "max_length": 32}')
    with pytest.raises(ModelLoadError, match="3 outputs but sift_model.json lists 2 labels"):
        LoadedModel.load(bad)


def test_runtime_does_not_import_mlflow():
    code = "import sys, model.runtime; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_reading_a_model_directory_imports_no_torch():
    """The retrain stage reads a champion's meta and labeled rows without paying for torch."""
    code = "import sys, model.format, model.data, retrain.dataio; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
