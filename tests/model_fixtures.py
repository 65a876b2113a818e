"""Session fixtures for a real, tiny fine-tuned model (loaded via ``pytest_plugins`` in conftest).

``tiny_model_dir``: a Sift model directory (1 encoder layer of the shipped MiniLM, max_length 32)
fine-tuned once per session on the synthetic sports / finance / weather corpus of
``tests/data/topics.json``; ~5-20 s on 2 shared cores. Held-out accuracy is ~1.0.
``tiny_examples``: one obvious text per label, in label order.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from model.data import LabeledText

if TYPE_CHECKING:
    from model.train import TrainSpec

DATA = Path(__file__).parent / "data"
TINY_LABELS = ["finance", "sports", "weather"]
TINY_TRAIN = {"epochs": 3, "learning_rate": 1e-3, "batch_size": 8, "max_length": 32, "num_hidden_layers": 1,
              "seed": 0}

TINY_EXAMPLES = {
    "finance": "the bank reported record quarterly profit and its shares rose on the stock exchange",
    "sports": "the striker scored a stunning late goal to win the championship match",
    "weather": "heavy rain and strong winds are expected tomorrow with snow overnight",
}

FILLER = "the committee met on tuesday to go through the agenda and the minutes of the last meeting. "


def document(ending: str, chars: int = 60_000) -> str:
    """``chars`` characters of topic-free filler, then ``ending``: the topic sits only at the end."""
    return (FILLER * (chars // len(FILLER) + 1))[:chars - len(ending) - 1] + " " + ending


def topic_rows(n_per_label: int, seed: int = 0) -> list[LabeledText]:
    """Template sentences per topic; different seeds give (mostly) different sentences."""
    spec = json.loads((DATA / "topics.json").read_text())
    rng = random.Random(seed)
    rows = []
    for label in TINY_LABELS:
        t = spec[label]
        for _ in range(n_per_label):
            text = rng.choice(t["templates"]).format(a=rng.choice(t["a"]), b=rng.choice(t["b"]), c=rng.choice(t["c"]))
            rows.append(LabeledText(text=text, label=label))
    rng.shuffle(rows)
    return rows


def tiny_spec(**overrides: Any) -> TrainSpec:
    """The tiny model's training spec (1 layer of the shipped encoder); ``overrides`` are TrainSpec fields."""
    from infra.settings import resolve_base_model
    from model.train import TrainSpec

    return TrainSpec(labels=TINY_LABELS, base_model=resolve_base_model(None), **{**TINY_TRAIN, **overrides})


def train_tiny(out_dir: Path, **overrides: Any):
    from model.train import fine_tune

    return fine_tune(topic_rows(40, seed=1), tiny_spec(**overrides), out_dir=out_dir,
                     eval_rows=topic_rows(15, seed=2), progress=False)


@pytest.fixture(scope="session")
def tiny_train_result(tmp_path_factory: pytest.TempPathFactory):
    return train_tiny(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_train_result) -> Path:
    return Path(tiny_train_result.model_dir)


@pytest.fixture(scope="session")
def tiny_examples() -> dict[str, str]:
    return dict(TINY_EXAMPLES)


def register_champion(settings, classifier: str, model_dir: Path) -> str:
    """Log a model directory to MLflow, register it and make it the classifier's champion."""
    import mlflow

    from infra.registry import Registry, configure_mlflow

    configure_mlflow(settings)
    mlflow.set_experiment(f"sift-{classifier}")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), "model")
    registry = Registry(settings)
    ref = registry.register(classifier, run.info.run_id)
    registry.set_champion(classifier, ref.version)
    return ref.version
