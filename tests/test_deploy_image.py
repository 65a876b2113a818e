"""The production image, built with podman on a debootstrapped Debian base, run against the real
loopback services (SeaweedFS, Tansu, MLflow from tests/services.py) with `--network host`.

Proves each role starts from the image as shipped: read-only root filesystem, non-root user, the
image's own HEALTHCHECK. The API answers /readyz with the champion loaded and takes a classify +
feedback round trip sent from inside its container (the event is read back from Kafka); a worker
reports healthy on its own port; MLflow starts from the same image and has the PostgreSQL and S3
drivers. `make test-deploy` builds the image first (and reports the build time); the fixture's
rebuild here is then a cache hit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.bus import Bus
from infra.local.procs import free_port
from infra.local.stack import settings_env
from infra.objectstore import ObjectStore
from infra.tenants import ClassifierConfig, TenantStore
from tests.bus_helpers import isolated, read_topic, wait_until
from tests.model_fixtures import register_champion

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.timeout(1800)]
ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("SIFT_TEST_IMAGE", "localhost/sift:dev")
BASE = os.environ.get("SIFT_TEST_BASE_IMAGE", "localhost/sift-base:bookworm")


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.returncode}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    """The image of this working tree (layers cached: unchanged code rebuilds nothing); `make test-deploy`
    has just built it and says so with SIFT_TEST_IMAGE_BUILT=1."""
    if os.environ.get("SIFT_TEST_IMAGE_BUILT") == "1":
        podman("image", "exists", IMAGE)
        return IMAGE
    subprocess.run([sys.executable, str(ROOT / "infra" / "deploy" / "podman_build.py"), "--tag", IMAGE,
                    "--base", BASE], check=True, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=3600)
    return IMAGE


class Containers:
    """Started containers, removed (with their volumes) at the end of the test."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.names: list[str] = []
        self.volumes: list[str] = []

    def run(self, role: str, env: dict[str, str], args: list[str], entrypoint: str | None = None) -> str:
        name = f"sift-test-{role}-{uuid.uuid4().hex[:8]}"
        volume = f"{name}-data"
        self.names.append(name)
        self.volumes.append(volume)
        opts = ["run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
                "--volume", f"{volume}:/data:U"]
        for key, value in env.items():
            opts += ["--env", f"{key}={value}"]
        if entrypoint:
            opts += ["--entrypoint", entrypoint]
        podman(*opts, self.image, *args)
        return name

    def running(self, name: str) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
        return state == "true"

    def logs(self, name: str) -> str:
        return podman("logs", name, check=False).stderr[-4000:]

    def healthy(self, name: str) -> bool:
        """The image's own HEALTHCHECK (infra/health.py picks the endpoint from the role)."""
        return podman("healthcheck", "run", name, check=False).returncode == 0

    def close(self) -> None:
        for name in self.names:
            podman("rm", "-f", "-t", "10", name, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "-f", volume, check=False)


@pytest.fixture
def containers(image: str) -> Iterator[Containers]:
    c = Containers(image)
    try:
        yield c
    finally:
        c.close()


def _container_env(settings) -> dict[str, str]:  # noqa: ANN001
    env = settings_env(settings)
    env["SIFT_DATA_DIR"] = "/data"  # the volume, not the test's host folder
    return env


def test_image_is_lean_non_root_and_the_mlflow_role_has_its_drivers(image):
    assert podman("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip() == "10001"
    probe = ("import importlib.metadata as m, torch, psycopg2, boto3, mlflow, shutil; "
             "names = {d.metadata['Name'].lower() for d in m.distributions()}; "
             "print(torch.__version__, sorted(n for n in names if n.startswith(('nvidia', 'pytest', 'ruff', 'pip', "
             "'seaweedfs')) or n in ('gcc',)), shutil.which('gcc'))")
    out = podman("run", "--rm", "--entrypoint", "python", image, "-c", probe).stdout.split(maxsplit=1)
    assert out[0] == "2.13.0+cpu", "the CPU build of torch"
    assert out[1].strip() == "[] None", f"build or dev tools, CUDA or local-stack packages in the image: {out[1]}"


def test_api_role_serves_the_champion_and_feedback_round_trips(containers, sift_settings, mlflow_server,
                                                                tiny_model_dir, tiny_examples):
    settings = isolated(sift_settings)
    Bus(settings).ensure_topics()
    labels = json.loads((Path(tiny_model_dir) / "sift_model.json").read_text())["labels"]
    tenants = TenantStore(ObjectStore(settings))
    name = f"img-{uuid.uuid4().hex[:8]}"
    _, key = tenants.create(ClassifierConfig(name=name, labels=labels, threshold=0.5))
    version = register_champion(settings, name, Path(tiny_model_dir))
    port = free_port()
    api = containers.run("api", _container_env(settings), ["serve", "--host", "127.0.0.1", "--port", str(port)])

    def ready() -> bool:
        assert containers.running(api), containers.logs(api)
        try:
            # which model serves is told to the admin key only (tenant names stay private)
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", headers={"x-admin-key": settings.admin_key}, timeout=5)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.json()["models"].get(name) == version

    assert wait_until(ready, timeout_s=600, interval_s=2), containers.logs(api)
    assert containers.healthy(api), "the image's HEALTHCHECK probes the API's /healthz"

    # from inside the container: classify, then dislike the prediction with the right label
    text, wrong = tiny_examples["sports"], "weather"
    script = f"""
import httpx, json, time
base, headers = "http://127.0.0.1:{port}/v1/classifiers/{name}", {{"x-api-key": {key!r}}}
pred = httpx.post(base + "/classify", json={{"text": {text!r}}}, headers=headers, timeout=30).json()["results"][0]
for _ in range(100):  # a prediction record is findable a moment after classify returns
    r = httpx.post(base + "/feedback", headers=headers, timeout=30,
                   json={{"prediction_id": pred["prediction_id"], "verdict": "dislike", "correct_label": {wrong!r}}})
    if r.status_code != 404:
        break
    time.sleep(0.1)
print(json.dumps({{"prediction": pred, "status": r.status_code, "body": r.json()}}))
"""
    result = json.loads(podman("exec", api, "python", "-c", script).stdout)
    assert result["prediction"]["label"] == "sports", result
    assert result["status"] == 202, result
    event_id = result["body"]["event_id"]
    events = [e for e in read_topic(settings, "review-requests", expect=1) if e.event_id == event_id]
    assert len(events) == 1, "the accepted feedback is on Kafka"
    event = events[0]
    assert (event.classifier, event.text, event.verdict, event.suggested_label) == (name, text, "dislike", wrong)
    assert event.model_version == version


def test_worker_role_reports_healthy_on_its_own_port(containers, sift_settings):
    settings = isolated(sift_settings)
    Bus(settings).ensure_topics()
    health_port = free_port()
    env = {**_container_env(settings), "SIFT_WORKER_HEALTH_PORT": str(health_port)}
    worker = containers.run("worker", env, ["worker", "dropfolder"])
    assert wait_until(lambda: containers.healthy(worker) or not containers.running(worker), 300, 2)
    assert containers.running(worker), containers.logs(worker)
    assert containers.healthy(worker), containers.logs(worker)
    metrics = httpx.get(f"http://127.0.0.1:{health_port}/metrics", timeout=5)
    assert metrics.status_code == 200 and "process_cpu_seconds_total" in metrics.text
    # SIGTERM: the worker stops cleanly (exit 0), well within Kubernetes' grace period
    podman("stop", "-t", "60", worker)
    assert podman("inspect", "--format", "{{.State.ExitCode}}", worker).stdout.strip() == "0", \
        containers.logs(worker)


def test_mlflow_role_starts_and_reports_healthy(containers, s3_server):
    port = free_port()
    env = {"MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint, "AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    mlflow = containers.run("mlflow", env, [
        "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", "sqlite:////data/mlflow.db",
        "--artifacts-destination", f"s3://{s3_server.bucket}/mlflow-artifacts",
    ], entrypoint="mlflow")
    env_probe = {"SIFT_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/health"}
    # the role is told apart by its command (mlflow); the port is this test's, not the default 5000
    probe = ["exec", *[f"--env={k}={v}" for k, v in env_probe.items()], mlflow, "python", "-m", "infra.health"]
    assert wait_until(lambda: podman(*probe, check=False).returncode == 0 or not containers.running(mlflow),
                      300, 2)
    assert podman(*probe, check=False).returncode == 0, containers.logs(mlflow)
    experiments = httpx.get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5", timeout=10)
    assert experiments.status_code == 200 and experiments.json()["experiments"][0]["name"] == "Default"
    # the started process runs `mlflow server`: what the image's health check keys on
    cmdline = podman("exec", mlflow, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert "server" in cmdline and any(Path(a).name == "mlflow" for a in cmdline)
