"""Registry faults and races around promotion, on the real stores: an MLflow error is never read as
"no champion", promotion is compare-and-set against the champion the job judged, a job that lost
its lease does not promote, and a failed job leaves its labels armed for the next one."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from infra.events import ModelEvent
from infra.objectstore import ObjectStore
from infra.registry import ChampionMoved, Registry, RegistryError
from retrain import paths
from retrain.job import CandidateSpec, JobOptions, RetrainJob, run_retrain_job
from retrain.models import list_models
from retrain.promote import promote
from retrain.seed import store_seed
from retrain.triggers import Triggers
from tests.model_fixtures import register_champion, topic_rows
from tests.retrain_helpers import make_classifier, reviewed, seed_classifier, weak_model_dir, write_reviewed

ONE_CANDIDATE = JobOptions(candidates=[CandidateSpec(name="fresh", init="base", num_hidden_layers=1, epochs=3)])


def _no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow retries a refused connection for minutes by default; against a dead port one try says
    the same (only set where MLflow is meant to be unreachable: live calls keep their retries)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


@pytest.fixture(scope="module")
def weak_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return weak_model_dir(tmp_path_factory.mktemp("weak"))


def _alerts(classifier: str, stage: str) -> float:
    return REGISTRY.get_sample_value("sift_retrain_failures_total", {"classifier": classifier, "stage": stage}) or 0


def test_no_champion_only_when_mlflow_says_so(sift_settings, mlflow_server, tiny_model_dir, monkeypatch):
    live = Registry(sift_settings)
    assert live.champion("never-registered") is None and live.versions("never-registered") == []
    cfg, _ = make_classifier(sift_settings)
    version = register_champion(sift_settings, cfg.name, tiny_model_dir)
    assert live.champion(cfg.name).version == version
    assert live.get_alias(cfg.name, "previous-champion") is None  # registered model, alias never set

    _no_retries(monkeypatch)
    dead = Registry(sift_settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"}))
    for read in (lambda: dead.champion(cfg.name), lambda: dead.versions(cfg.name),
                 lambda: list_models(dead, cfg.name)):
        with pytest.raises(RegistryError):
            read()


def test_promotion_is_compare_and_set_on_the_champion(sift_settings, mlflow_server, tiny_model_dir):
    cfg, _ = make_classifier(sift_settings)
    store, registry, published = ObjectStore(sift_settings), Registry(sift_settings), []
    v1 = register_champion(sift_settings, cfg.name, tiny_model_dir)
    v2 = register_champion(sift_settings, cfg.name, tiny_model_dir)  # moved meanwhile (say by an operator)
    assert registry.champion(cfg.name).version == v2

    with pytest.raises(ChampionMoved):  # a candidate judged against v1 must not replace v2
        promote(registry, store, published.append, cfg.name, v1, expected=v1 + "-judged")
    with pytest.raises(ChampionMoved):
        promote(registry, store, published.append, cfg.name, v1, expected=None)
    assert registry.champion(cfg.name).version == v2 and published == []

    promote(registry, store, published.append, cfg.name, v1, expected=v2)
    assert registry.champion(cfg.name).version == v1 and [e.version for e in published] == [v1]


def _seeded_with_labels(settings, n_per_label: int = 4) -> tuple[str, int]:
    """A classifier whose data passes validation and whose trigger has counted reviewed labels."""
    cfg, _ = make_classifier(settings)
    store_seed(ObjectStore(settings), cfg.name, topic_rows(40, seed=1), source="tests")
    events = reviewed(cfg.name, topic_rows(n_per_label, seed=3))
    write_reviewed(settings, events)
    triggers = Triggers(ObjectStore(settings))
    for e in events:
        triggers.record(e)
    return cfg.name, triggers.new_labels(cfg.name)


def test_unreachable_registry_fails_the_job_trains_nothing_and_keeps_the_trigger_armed(sift_settings, monkeypatch):
    _no_retries(monkeypatch)
    # sift_settings without the mlflow_server fixture points MLflow at a closed port
    name, armed = _seeded_with_labels(sift_settings)
    assert armed == 12
    published: list[ModelEvent] = []

    record = run_retrain_job(sift_settings, name, ONE_CANDIDATE, publish=published.append)

    assert record.status == "failed", record.reason
    assert "RegistryError" in record.reason and "the champion keeps serving" in record.reason
    assert record.candidates == [] and published == []  # not read as "no champion yet": nothing trained
    assert _alerts(name, "job") == 1
    triggers = Triggers(ObjectStore(sift_settings))
    assert triggers.new_labels(name) == armed  # the next job takes these labels


class _Interleaved(RetrainJob):
    """A real job with something else happening between training and promotion."""

    meanwhile = staticmethod(lambda job: None)

    def _train_candidates(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        trained = super()._train_candidates(*args, **kwargs)
        self.meanwhile(self)
        return trained


def test_champion_moved_during_the_job_is_not_replaced(sift_settings, mlflow_server, weak_dir, tiny_model_dir):
    cfg, _, judged = seed_classifier(sift_settings, weak_dir)
    write_reviewed(sift_settings, reviewed(cfg.name, topic_rows(4, seed=3)))
    registry, published = Registry(sift_settings), []
    moved: list[str] = []
    job = _Interleaved(sift_settings, cfg.name, ONE_CANDIDATE, publish=published.append)
    job.meanwhile = lambda j: moved.append(register_champion(sift_settings, cfg.name, tiny_model_dir))

    record = job.run()

    assert record.status == "not_promoted", record.reason
    assert record.champion_before == judged and record.verdict is not None and record.verdict.blessed
    assert "ChampionMoved" not in record.reason and f"not v{judged}" in record.reason
    assert registry.champion(cfg.name).version == moved[0] == record.champion_after
    assert published == [] and _alerts(cfg.name, "promote") == 1


def test_job_that_lost_its_lease_does_not_promote(sift_settings, mlflow_server, weak_dir):
    cfg, _, champion = seed_classifier(sift_settings, weak_dir)
    write_reviewed(sift_settings, reviewed(cfg.name, topic_rows(4, seed=3)))
    store, registry, published = ObjectStore(sift_settings), Registry(sift_settings), []
    job = _Interleaved(sift_settings, cfg.name, ONE_CANDIDATE, publish=published.append)

    def taken_over(j: RetrainJob) -> None:  # another worker decided the lease had expired and took it
        lease = store.get_json(paths.lock(cfg.name))
        store.put_json(paths.lock(cfg.name), {**lease, "token": "someone-else", "holder": "another job"})

    job.meanwhile = taken_over
    record = job.run()

    assert record.status == "not_promoted", record.reason
    assert record.verdict is not None and record.verdict.blessed and "lease" in record.reason
    assert registry.champion(cfg.name).version == champion and published == []
    assert store.get_json(paths.lock(cfg.name))["token"] == "someone-else"  # its release left the other's lease
