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


def _free_base() -> int:
    """A port base whose five demo ports (+80 +92 +333 +500 +800) are all free on loopback now."""
    import socket

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 40_000)
        try:
            for off in (80, 92, 333, 500, 800):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", base + off))
        except OSError:
            continue
        return base
    raise RuntimeError("no free demo port base")


@pytest.mark.integration  # the whole product on its own local stack, both arms side by side: ~3 min
@pytest.mark.labelstudio
@pytest.mark.timeout(900)
def test_miniature_multi_arm_loop_through_the_product(tmp_path) -> None:
    from demo.loop import LoopConfig, run_loop
    from demo.report import loop_table, verdict_table
    from infra.local.labelstudio import label_studio_venv

    if not (label_studio_venv() / "bin" / "label-studio").exists():
        pytest.skip(f"Label Studio venv not found at {label_studio_venv()} (set SIFT_LABEL_STUDIO_VENV)")
    # 114 distinct texts, 3 labels: topic_rows repeats a few, and a text reviewed twice is one label
    pool = list({r.text: r for r in topic_rows(40, seed=1)}.values())
    test = [r for r in topic_rows(8, seed=2) if r.text not in {p.text for p in pool}]
    cfg = LoopConfig(data_dir=tmp_path / "stack", port_base=_free_base(), prefix="tdemo", seeds=[0],
                     seed_labels=24, min_per_label=6, rounds=2, labels_per_round=6, traffic_chunk=20,
                     threshold=0.9, sample_rate=0.3, review_window=8, test_size=len(test), pool_size=len(pool),
                     num_hidden_layers=1, max_length=32, seed_epochs=2, epochs=1, job_time_budget_s=120,
                     retrain_workers=2, round_timeout_s=300)
    result = run_loop(cfg, pool, test, say=print)

    by = {(a.arm, a.seed): a for a in result.arms}
    assert set(by) == {("uncertainty", 0), ("random", 0)}
    unc, rnd = by[("uncertainty", 0)], by[("random", 0)]
    # both arms start from the one seed model, scored on the whole held-out set
    assert unc.versions[0].macro_f1 == rnd.versions[0].macro_f1 and unc.versions[0].job_status == "seed"
    for a in (unc, rnd):
        assert [v.round for v in a.versions] == [0, 1, 2]
        assert [r.answered for r in a.rounds] == [6, 6]
        assert all(v.job_status in ("promoted", "not_promoted") for v in a.versions[1:]), a.versions
        assert all(v.gain_interval is not None and v.gain_interval[0] <= v.gain <= v.gain_interval[1]
                   for v in a.versions[1:])
        assert a.versions[-1].reviewed_labels >= 12
    # the reviewer got what each arm's routing chose: confidence routing vs the audit sample
    unc_origins = {o for r in unc.rounds for o in r.answered_origins}
    rnd_origins = {o for r in rnd.rounds for o in r.answered_origins}
    assert unc_origins == {"low_confidence"} and rnd_origins == {"audit_sample"}
    assert [p.round for p in result.curves["random"]] == [0, 1, 2]
    assert result.curves["uncertainty"][0].macro_f1_std == 0.0  # one seed: no spread
    assert "[" in verdict_table(result) and "uncertainty" in loop_table(result)
