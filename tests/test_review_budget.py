"""A review budget: the routing threshold follows recent confidences so that about
``review_budget_per_day`` texts a day go to review, whatever the model's calibration."""

from __future__ import annotations

import json
import random
import uuid

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from classifier.engine import ServingEngine
from classifier.routing import BudgetRouter, review_request_for
from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import DEFAULT_THRESHOLD, ClassifierConfig, TenantStore
from review import cli as review_cli
from review.status import review_status
from sift.app import create_app

LABELS = ["sports", "tech"]


class Clock:
    """Simulated time: the traffic rate is part of what the router measures."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _overconfident(rng: random.Random) -> float:
    """Confidences piled up near 1, as an uncalibrated softmax gives them."""
    return 0.5 + 0.5 * rng.betavariate(8, 1.5)


def _serve(router: BudgetRouter, clock: Clock, cfg: ClassifierConfig, rng: random.Random, n: int,
           every_s: float) -> float:
    """Classify ``n`` texts, one per ``every_s``; the share that went to review."""
    routed = 0
    for _ in range(n):
        clock.t += every_s
        confidence = _overconfident(rng)
        router.observe(cfg.name, confidence)
        req = review_request_for(cfg, "t", "tech", confidence, {"tech": confidence}, "1", uuid.uuid4().hex,
                                 router.threshold(cfg))
        routed += req is not None
    return routed / n


def test_routed_share_converges_to_budget_over_traffic_and_follows_the_rate() -> None:
    clock, rng = Clock(), random.Random(13)
    router = BudgetRouter(window_s=3600, clock=clock)
    cfg = ClassifierConfig(name="budget", labels=LABELS, review_budget_per_day=4_320)
    assert cfg.threshold is None and cfg.budget_routing
    # a fixed threshold would be hopeless here: 0.6 sends almost nothing, 0.97 most of the texts
    assert router.threshold(cfg) == DEFAULT_THRESHOLD  # nothing seen yet

    _serve(router, clock, cfg, rng, 4_000, every_s=1.0)  # warm up: 86,400 texts a day
    share = _serve(router, clock, cfg, rng, 10_000, every_s=1.0)
    assert share == pytest.approx(4_320 / 86_400, abs=0.01)  # 5 %

    _serve(router, clock, cfg, rng, 8_000, every_s=0.5)  # traffic doubles: the window catches up
    share = _serve(router, clock, cfg, rng, 10_000, every_s=0.5)
    assert share == pytest.approx(4_320 / 172_800, abs=0.008)  # 2.5 %

    _serve(router, clock, cfg, rng, 2_000, every_s=60.0)  # less traffic than budget: review everything
    assert _serve(router, clock, cfg, rng, 500, every_s=60.0) == 1.0


def test_a_fixed_threshold_wins_over_the_budget() -> None:
    clock, rng = Clock(), random.Random(5)
    router = BudgetRouter(clock=clock)
    cfg = ClassifierConfig(name="fixed", labels=LABELS, threshold=0.5, review_budget_per_day=4_320)
    assert not cfg.budget_routing
    _serve(router, clock, cfg, rng, 2_000, every_s=1.0)
    assert router.threshold(cfg) == 0.5
    assert _serve(router, clock, cfg, rng, 2_000, every_s=1.0) == 0.0  # every confidence is above 0.5


def test_config_keeps_stored_thresholds_and_validates_the_budget() -> None:
    stored = {"name": "old", "labels": LABELS, "threshold": 0.7}  # a config from before budgets
    assert ClassifierConfig.model_validate(stored).threshold == 0.7
    assert ClassifierConfig(name="plain", labels=LABELS).threshold == DEFAULT_THRESHOLD
    assert ClassifierConfig(name="plain", labels=LABELS, threshold=None).threshold == DEFAULT_THRESHOLD
    for bad in (0, -5, 10**9):
        with pytest.raises(ValueError, match="review_budget_per_day"):
            ClassifierConfig(name="bad", labels=LABELS, review_budget_per_day=bad)


def test_replicas_share_the_budget_and_review_status_projects_the_load(sift_settings: Settings) -> None:
    """Two API replicas, each seeing half the traffic, route about the budget together (not twice
    it), and `review status` adds their projections up."""
    store = ObjectStore(sift_settings)
    tenants = TenantStore(store)
    cfg, _ = tenants.create(ClassifierConfig(name=f"bg-{uuid.uuid4().hex[:8]}", labels=LABELS,
                                             review_budget_per_day=8_640))
    replicas = [(BudgetRouter(window_s=3600, clock=c), c, random.Random(i), f"replica-{i}")
                for i, c in enumerate([Clock(), Clock()])]
    for router, clock, rng, _name in replicas:
        _serve(router, clock, cfg, rng, 4_000, every_s=1.0)
    for router, _clock, _rng, name in replicas:  # the sharing thread's pass, on each replica
        router.share(store, tenants.get, name)
    for router, _clock, _rng, name in replicas:
        router.share(store, tenants.get, name)  # now each has read the other's traffic
        assert router.others_per_day[cfg.name] == pytest.approx(86_400, rel=0.01)

    shares = [_serve(router, clock, cfg, rng, 10_000, every_s=1.0) for router, clock, rng, _ in replicas]
    assert sum(shares) * 86_400 == pytest.approx(8_640, rel=0.15)  # about the budget, not 2x
    for router, _clock, _rng, name in replicas:
        router.share(store, tenants.get, name)

    status = review_status(sift_settings, cfg.name, store=store)
    assert status.review_budget_per_day == 8_640 and status.threshold is None
    assert status.traffic_per_day == pytest.approx(172_800, rel=0.01)
    assert status.projected_reviews_per_day == pytest.approx(8_640, rel=0.15)
    assert len(status.thresholds_in_force) == 2 and all(0.5 < t < 1 for t in status.thresholds_in_force)
    result = CliRunner().invoke(review_cli.app, ["status", cfg.name])  # `sift review status NAME`
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["projected_reviews_per_day"] == status.projected_reviews_per_day


def test_admin_api_sets_and_clears_the_budget(sift_settings: Settings) -> None:
    app = create_app(sift_settings, engine=ServingEngine(lambda name: None))
    name = f"bga-{uuid.uuid4().hex[:8]}"
    with TestClient(app) as client:
        client.headers["x-admin-key"] = sift_settings.admin_key
        r = client.post("/v1/admin/classifiers", json={"name": name, "labels": LABELS, "review_budget_per_day": 200})
        assert r.status_code == 201, r.text
        assert r.json()["classifier"]["threshold"] is None and r.json()["classifier"]["review_budget_per_day"] == 200
        url = f"/v1/admin/classifiers/{name}"
        assert client.patch(url, json={"threshold": 0.4}).json()["threshold"] == 0.4  # fixed wins, budget kept
        assert client.get(url).json()["review_budget_per_day"] == 200
        body = client.patch(url, json={"review_budget_per_day": 300}).json()  # a new budget takes over routing
        assert body["threshold"] is None and body["review_budget_per_day"] == 300
        body = client.patch(url, json={"review_budget_per_day": None}).json()  # no budget: the default again
        assert body["threshold"] == DEFAULT_THRESHOLD and body["review_budget_per_day"] is None
        r = client.patch(url, json={"review_budget_per_day": 0})
        assert r.status_code == 422 and "review_budget_per_day" in r.json()["detail"]
        assert client.get(url).json()["threshold"] == DEFAULT_THRESHOLD  # the refused change changed nothing
