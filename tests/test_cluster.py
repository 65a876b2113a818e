"""The production shape on loopback, under load, with kills: two Tansu brokers and three API replicas
behind HAProxy, two workers of each kind, MLflow and Label Studio on PostgreSQL (`sift up
--api-replicas 3 --workers 2 --brokers 2`, started here through the same LocalStack and
start_processes).

While classify + feedback load runs through the load balancer (the client retries only when it
could not get an answer at all), one API replica, one review worker and one broker are SIGKILLed,
one classifier gets a new champion, another a new threshold, a third loses a key. Every feedback
answered 202 must become exactly one Label Studio task; every surviving replica must serve each
change within its bound.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from infra.bus import Bus
from infra.local.postgres import PostgresServer
from infra.local.procs import free_port
from infra.local.stack import LocalStack, Topology
from infra.objectstore import ObjectStore
from infra.registry import Registry
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from retrain.promote import bus_publish, promote
from review.labelstudio import ReviewProjects
from review.worker import partition_of
from sift.local_up import start_processes
from sift.onboarding import create_classifier
from tests.bus_helpers import wait_until
from tests.model_fixtures import TINY_EXAMPLES, TINY_LABELS, register_champion

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

PROMOTION_BOUND_S = 10.0  # README: a promotion reaches every replica within 10 s
TENANT_BOUND_S = 10.0  # README: threshold and key changes hold on every replica within 10 s
TAKEOVER_S = 240.0  # a killed worker's partitions move after the group's session timeout; LS is slow here
RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectTimeout)


def _names(n: int, partitions: int) -> list[str]:
    """Classifier names on distinct partitions, so that however the group splits, both workers work."""
    names: dict[int, str] = {}
    while len(names) < n:
        name = f"cl-{uuid.uuid4().hex[:8]}"
        names.setdefault(partition_of(name, partitions), name)
    return list(names.values())


class Load:
    """Bounded classify + feedback traffic through the load balancer."""

    def __init__(self, url: str, keys: dict[str, str], max_rounds: int) -> None:
        self.url, self.keys, self.max_rounds = url, keys, max_rounds
        self.stop = threading.Event()
        self.accepted: list[tuple[str, str]] = []  # (classifier, text) of every feedback answered 202
        self.failures: list[str] = []
        self.rounds = 0
        self._lock = threading.Lock()

    def _post(self, client: httpx.Client, path: str, key: str, body: dict) -> httpx.Response:
        """Retried only when no replica answered: a connection error, or the load balancer's own
        502/503/504 page (HTML; Sift's errors are JSON) for a request whose replica died under it."""
        for _ in range(20):
            try:
                r = client.post(f"{self.url}{path}", headers={"x-api-key": key}, json=body)
            except RETRYABLE:
                time.sleep(0.5)
                continue
            if r.status_code in (502, 503, 504) and "text/html" in r.headers.get("content-type", ""):
                time.sleep(0.5)
                continue
            return r
        raise AssertionError(f"no answer from the load balancer for {path}")

    def run(self, worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self.stop.is_set() and i < self.max_rounds:
                for name, key in self.keys.items():
                    label = TINY_LABELS[i % len(TINY_LABELS)]
                    text = f"{TINY_EXAMPLES[label]} ({name} load {worker}-{i})"
                    r = self._post(client, f"/v1/classifiers/{name}/classify", key, {"text": text})
                    if r.status_code != 200:
                        self.failures.append(f"classify {name}: {r.status_code} {r.text[:200]}")
                        continue
                    got = r.json()["results"][0]["label"]
                    r = self._post(client, f"/v1/classifiers/{name}/feedback", key,
                                   {"text": text, "label": got, "verdict": "dislike"})
                    if r.status_code == 202:
                        with self._lock:
                            self.accepted.append((name, text))
                    else:
                        self.failures.append(f"feedback {name}: {r.status_code} {r.text[:200]}")
                i += 1
                with self._lock:
                    self.rounds += 1
                self.stop.wait(0.5)  # a steady trickle: every feedback becomes a task Label Studio must hold


def _log_lines(stack: LocalStack, name: str, pattern: str) -> list[str]:
    path = stack.log_dir / f"{name}.log"
    return [line for line in path.read_text(errors="replace").splitlines() if pattern in line] if path.exists() else []


def _classify(port: int, name: str, key: str, text: str) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/v1/classifiers/{name}/classify", headers={"x-api-key": key},
                      json={"text": text}, timeout=30)


def _tasks(projects: ReviewProjects, project_id: int) -> list[dict]:
    return [t for _, page in projects._pages(project_id, '{"filters": {"conjunction": "and", "items": []}}',
                                             fields="all") for t in page]


def test_cluster_survives_kills_and_every_change_reaches_every_replica(tmp_path: Path, tiny_model_dir: Path) -> None:
    def url() -> str:
        return f"http://127.0.0.1:{free_port()}"

    settings = Settings(
        data_dir=tmp_path / "cluster", s3_endpoint=url(), kafka_bootstrap=f"127.0.0.1:{free_port()}",
        mlflow_tracking_uri=url(), label_studio_url=url(), public_api_url=url(),
        bucket=f"sift-cluster-{uuid.uuid4().hex[:6]}", s3_access_key="cluster-key", s3_secret_key="cluster-secret",
        topic_prefix="sift.", kafka_partitions=3, model_poll_seconds=600.0,  # only events explain a swap
    )
    stack = LocalStack(settings, die_with_parent=True, topology=Topology(api_replicas=3, workers=2, brokers=2))
    admin = {"x-admin-key": settings.admin_key}
    lb = settings.public_api_url
    try:
        stack.start(timeout=400)
        status = stack.status()
        assert [n for n in ("postgres", "lb", "kafka-0", "kafka-1") if not status[n]["ready"]] == []
        Bus(settings).ensure_topics()

        store = ObjectStore(settings)
        tenants = TenantStore(store)
        a, b, c = _names(3, settings.kafka_partitions)
        keys: dict[str, str] = {}
        versions: dict[str, str] = {}
        for name in (a, b, c):
            cfg, key, warnings = create_classifier(settings, tenants, ClassifierConfig(
                name=name, labels=TINY_LABELS, threshold=0.05, review_window=10_000))  # every request a task
            assert warnings == [], warnings  # Label Studio project, webhook and topics provisioned
            keys[name] = key
            versions[name] = register_champion(settings, name, tiny_model_dir)  # MLflow on PostgreSQL
        revoked = tenants.issue_key(c)  # c gets a second key, revoked under load; the first keeps serving
        revoked_id = tenants.require(c).api_keys[-1].key_id

        start_processes(stack, settings)
        replica_ports = stack.topology.api_ports
        assert wait_until(lambda: all(httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=5).status_code == 200
                                      for p in replica_ports), 300, 1.0)
        assert _classify(replica_ports[0], c, revoked, TINY_EXAMPLES["sports"]).status_code == 200

        load = Load(lb, keys, max_rounds=400)  # bounded; stopped once the kills and changes are checked
        threads = [threading.Thread(target=load.run, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()

        # before any kill: every replica answered through the balancer and both review workers did work
        def served(port: int) -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=admin, timeout=10).text
            return sum(float(v) for v in re.findall(r'^sift_classify_requests_total\{[^}]*status="200"[^}]*\} (\S+)',
                                                    text, re.M))
        assert wait_until(lambda: all(served(p) > 0 for p in replica_ports), 180, 1.0), \
            (load.rounds, load.failures[:5], [served(p) for p in replica_ports])
        assert wait_until(lambda: all(_log_lines(stack, f"worker-review-{i}", "review-request ") for i in (0, 1)),
                          TAKEOVER_S, 1.0), [_log_lines(stack, f"worker-review-{i}", "owns partitions") for i in (0, 1)]

        # the kills: a replica, a review worker, a broker
        stack.commands["api-0"].kill()
        stack.commands["worker-review-0"].kill()
        stack.services["kafka-0"].kill()
        rounds_at_kill = load.rounds
        survivors = replica_ports[1:]

        # the changes, while the load goes on
        import mlflow

        registry = Registry(settings)
        mlflow.set_experiment(f"sift-{a}")  # register_champion configured the tracking URI
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(tiny_model_dir), "model")
        new = registry.register(a, run.info.run_id).version
        promote(registry, store, bus_publish(settings), a, new)
        promoted_at = time.monotonic()
        assert httpx.patch(f"{lb}/v1/admin/classifiers/{b}", headers=admin, json={"threshold": 1.0}).status_code == 200
        changed_at = time.monotonic()
        assert httpx.delete(f"{lb}/v1/admin/classifiers/{c}/keys/{revoked_id}", headers=admin).status_code == 204
        revoked_at = time.monotonic()

        def version_on(port: int) -> str | None:
            r = _classify(port, a, keys[a], TINY_EXAMPLES["finance"])
            return r.json()["results"][0]["model_version"] if r.status_code == 200 else None

        def routed_on(port: int) -> bool:
            r = _classify(port, b, keys[b], TINY_EXAMPLES["weather"])
            return r.status_code == 200 and r.json()["results"][0]["review_requested"] is True

        assert wait_until(lambda: all(version_on(p) == new for p in survivors), 60, 0.2)
        promotion_s = time.monotonic() - promoted_at
        assert wait_until(lambda: all(routed_on(p) for p in survivors), 60, 0.2)
        threshold_s = time.monotonic() - changed_at
        assert wait_until(lambda: all(_classify(p, c, revoked, "x y z").status_code == 401 for p in survivors), 60, 0.2)
        revoke_s = time.monotonic() - revoked_at
        assert all(_classify(p, c, keys[c], TINY_EXAMPLES["sports"]).status_code == 200 for p in survivors)
        # bounds measured from the request that made the change (the replicas hear of it through Kafka,
        # with one of the two brokers dead)
        assert promotion_s <= PROMOTION_BOUND_S, promotion_s
        assert threshold_s <= TENANT_BOUND_S and revoke_s <= TENANT_BOUND_S, (threshold_s, revoke_s)

        assert wait_until(lambda: load.rounds >= rounds_at_kill + 6, 300, 1.0)  # traffic went on after the kills
        load.stop.set()
        for t in threads:
            t.join(120)
        assert load.failures == [], load.failures[:10]
        assert len(load.accepted) >= 30

        # every feedback answered 202 is exactly one task, after the survivor took over the dead worker's share
        projects = ReviewProjects.from_settings(settings)
        project = {name: tenants.require(name).label_studio_project_id for name in (a, b, c)}
        expected = {name: {text for n, text in load.accepted if n == name} for name in (a, b, c)}

        def texts(name: str) -> list[str]:
            return [t["data"]["text"] for t in _tasks(projects, project[name])]

        def all_there() -> bool:
            return all(expected[n] <= set(texts(n)) for n in (a, b, c))

        assert wait_until(all_there, TAKEOVER_S, 2.0), {n: len(expected[n] - set(texts(n))) for n in (a, b, c)}
        for name in (a, b, c):
            got = [t for t in texts(name) if t in expected[name]]
            assert len(got) == len(set(got)) == len(expected[name]), name  # one task per text: no duplicate
        assert _log_lines(stack, "worker-review-1", "owns partitions")[-1].endswith("[0, 1, 2] of sift.review-requests")
    finally:
        stack.stop()
        PostgresServer(stack.data_dir / "postgres").remove_data()
        print(f"cluster logs: {stack.log_dir}", file=sys.stderr)
