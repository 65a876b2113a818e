"""A promotion and a rollback reach a running classify server under concurrent load, with no failed request.

The server is the real app (``create_app`` + uvicorn in a thread) with the registry poll slowed to
10 minutes, so the swaps observed here come through the model-event path. The retrain job is
started through the admin API (202 + job id) and followed through its job record.
"""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest
import uvicorn

from infra.local.procs import port_is_free
from retrain.api import router as retrain_router
from sift.app import create_app
from tests.model_fixtures import TINY_EXAMPLES, topic_rows
from tests.retrain_helpers import FAST_OPTIONS, reviewed, seed_classifier, weak_model_dir, write_reviewed


def _port() -> int:
    for _ in range(200):
        p = random.randint(24000, 24999)
        if port_is_free(p):
            return p
    raise RuntimeError("no free port in 24000-24999")


class Load:
    """Clients classifying in a loop; every answer's (status, model_version) is kept in order."""

    def __init__(self, base: str, name: str, key: str, clients: int = 3) -> None:
        self.stop = threading.Event()
        self.seen: list[list[str]] = [[] for _ in range(clients)]
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(base, name, key, i), daemon=True)
                        for i in range(clients)]

    def _run(self, base: str, name: str, key: str, i: int) -> None:
        texts = list(TINY_EXAMPLES.values())
        with httpx.Client(base_url=base, headers={"x-api-key": key}, timeout=60) as c:
            n = 0
            while not self.stop.is_set():
                n += 1
                try:
                    r = c.post(f"/v1/classifiers/{name}/classify", json={"text": texts[n % len(texts)]})
                except httpx.HTTPError as exc:
                    self.failures.append(f"client {i}: {exc!r}")
                    continue
                if r.status_code != 200:
                    self.failures.append(f"client {i}: {r.status_code} {r.text[:200]}")
                    continue
                self.seen[i].append(r.json()["results"][0]["model_version"])
                time.sleep(0.02)

    def latest(self) -> set[str]:
        return {s[-1] for s in self.seen if s}

    def wait_answers(self, n: int, timeout: float) -> None:
        start = [len(s) for s in self.seen]
        deadline = time.monotonic() + timeout
        while any(len(s) < k + n for s, k in zip(self.seen, start, strict=True)):
            assert time.monotonic() < deadline, f"clients stalled: {[len(s) for s in self.seen]}"
            time.sleep(0.1)

    def wait_for(self, version: str, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.latest() == {version}:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise AssertionError(f"clients still see {self.latest()} after {timeout}s, expected v{version}")


@pytest.fixture
def server(sift_settings, mlflow_server):
    settings = sift_settings.model_copy(update={"model_poll_seconds": 600.0})
    app = create_app(settings)
    app.include_router(retrain_router)
    port = _port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", settings
    srv.should_exit = True
    thread.join(timeout=20)


def _dedupe(seq: list[str]) -> list[str]:
    return [v for i, v in enumerate(seq) if i == 0 or seq[i - 1] != v]


def test_promotion_and_rollback_reach_the_server_without_failed_requests(server, tmp_path):
    base, settings = server
    cfg, key, v1 = seed_classifier(settings, weak_model_dir(tmp_path))
    write_reviewed(settings, reviewed(cfg.name, topic_rows(12, seed=3)))
    admin = httpx.Client(base_url=base, headers={"x-admin-key": settings.admin_key}, timeout=30)

    load = Load(base, cfg.name, key)
    for t in load.threads:
        t.start()
    load.wait_for(v1, timeout=60)

    body = {"candidates": [c.model_dump() for c in FAST_OPTIONS.candidates]}
    r = admin.post(f"/v1/admin/classifiers/{cfg.name}/retrain", json=body)
    assert r.status_code == 202, r.text
    job_url = r.json()["status_url"]
    assert admin.post(f"/v1/admin/classifiers/{cfg.name}/retrain", json=body).status_code == 409
    deadline = time.monotonic() + 240
    while (job := admin.get(job_url).json())["status"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["status"] == "promoted", job["reason"]
    v2 = job["selected_version"]
    assert v2 != v1 and job["champion_after"] == v2
    swap_s = load.wait_for(v2, timeout=30)

    r = admin.post(f"/v1/admin/classifiers/{cfg.name}/rollback")
    assert r.status_code == 200, r.text
    assert r.json() == {"classifier": cfg.name, "version": v1, "action": "rolled_back"}
    load.wait_for(v1, timeout=30)
    load.wait_answers(5, timeout=30)  # five more answers per client after the rollback: none flaps back
    load.stop.set()
    for t in load.threads:
        t.join(timeout=60)

    assert load.failures == []
    assert sum(len(s) for s in load.seen) > 50
    for seq in load.seen:
        assert _dedupe(seq) == [v1, v2, v1], _dedupe(seq)  # one clean swap each way, never flapping
    # a second rollback has nowhere to go (v1 was the first champion)
    assert admin.post(f"/v1/admin/classifiers/{cfg.name}/rollback").status_code == 409

    listed = {m["version"]: m for m in admin.get(f"/v1/admin/classifiers/{cfg.name}/models").json()}
    assert listed[v1]["aliases"] == ["champion"]
    assert listed[v2]["blessed"] is True and listed[v2]["dataset_version"] == job["dataset"]["version_id"]
    print(f"swap reached all clients {swap_s:.2f}s after the job finished")
