"""A miniature ``sift demo`` part A: result structure, and accuracy scored on the held-out set only."""

from __future__ import annotations

import random

import pytest

from demo.experiment import ExperimentConfig, margins, run_experiment, select
from tests.model_fixtures import TINY_LABELS, topic_rows


def test_margin_query_picks_the_closest_calls() -> None:
    import numpy as np

    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0], [0.7, 0.2, 0.1]])
    assert np.allclose(margins(probs), [0.85, 0.05, 0.0, 0.5])
    picked, mean = select("uncertainty", [10, 11, 12, 13], 2, random.Random(0), probs)
    assert picked == [12, 11] and mean is not None and abs(mean - 0.025) < 1e-6
    assert sorted(select("random", [10, 11, 12, 13], 2, random.Random(0))[0]) != []


@pytest.mark.integration  # two arms, three rounds of training each: minutes, not a unit test
def test_miniature_experiment(tmp_path) -> None:
    pool = topic_rows(20, seed=1)  # 60 texts
    test = [r for r in topic_rows(8, seed=2) if r.text not in {p.text for p in pool}]
    cfg = ExperimentConfig(seeds=[0], initial_labels=6, rounds=2, batch=6, num_hidden_layers=1, max_length=32,
                           epochs=1, min_steps=4, batch_size=8, learning_rate=1e-3)
    result = run_experiment(cfg, pool=pool, test=test, work_dir=tmp_path, progress=False)

    assert result.labels == TINY_LABELS and result.test_size == len(test) and result.pool_size == len(pool)
    assert sorted((a.seed, a.strategy) for a in result.arms) == [(0, "random"), (0, "uncertainty")]
    for arm in result.arms:
        assert [r.labels for r in arm.rounds] == [6, 12, 18]
        queried = [i for r in arm.rounds for i in r.queried]
        assert len(queried) == len(set(queried)) == 18  # every label is a new pool text
        for r in arm.rounds:
            assert r.test_examples == len(test)  # scored on the whole held-out set ...
            assert 0.0 <= r.accuracy <= 1.0 and 0.0 <= r.macro_f1 <= 1.0
        assert not {pool[i].text for i in queried} & {t.text for t in test}  # ... which is never labelled
    # round 0 is one shared model: both arms start from the same score
    assert len({a.rounds[0].accuracy for a in result.arms}) == 1
    assert [p.labels for p in result.curves["uncertainty"]] == [6, 12, 18]
    assert result.curves["random"][0].accuracy_std == 0.0

    from demo.report import write_results

    paths = write_results(tmp_path / "out", result, None, wall_s=1.0)
    assert paths["plot"].stat().st_size > 1000 and "uncertainty" in paths["markdown"].read_text()
    assert "accuracy.png" in paths["readme_section"].read_text()
