"""`sift worker ...` answers health and metrics on its own port, and the image's health probe picks the
endpoint of each role from the container's command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from infra.health import probe_url
from infra.local.procs import free_port
from infra.local.stack import settings_env
from tests.bus_helpers import wait_until


@pytest.mark.parametrize(("cmdline", "env", "url"), [
    (["/opt/venv/bin/python", "/opt/venv/bin/sift", "serve", "--host", "0.0.0.0", "--port", "8000"], {},
     "http://127.0.0.1:8000/healthz"),
    (["/opt/venv/bin/python", "/opt/venv/bin/sift", "serve", "--port", "9100"], {}, "http://127.0.0.1:9100/healthz"),
    (["/opt/venv/bin/python", "/opt/venv/bin/sift", "worker", "review"], {"SIFT_WORKER_HEALTH_PORT": "8001"},
     "http://127.0.0.1:8001/healthz"),
    (["/opt/venv/bin/python", "/opt/venv/bin/sift", "worker", "retrain"], {"SIFT_WORKER_HEALTH_PORT": "9001"},
     "http://127.0.0.1:9001/healthz"),
    (["/opt/venv/bin/python", "/opt/venv/bin/mlflow", "server", "--port", "5000"], {}, "http://127.0.0.1:5000/health"),
    (["anything"], {"SIFT_HEALTHCHECK_URL": "http://127.0.0.1:1/x"}, "http://127.0.0.1:1/x"),
])
def test_probe_picks_the_endpoint_of_the_role(cmdline, env, url):
    assert probe_url(cmdline, env) == url


def test_worker_serves_health_and_metrics_and_stops_on_sigterm(sift_settings, tmp_path):
    port = free_port()
    env = {**os.environ, **settings_env(sift_settings), "SIFT_WORKER_HEALTH_PORT": str(port)}
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sift.cli", "worker", "dropfolder"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(healthy, timeout_s=120, interval_s=0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json() == {"status": "ok"}
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        assert metrics.status_code == 200 and "process_cpu_seconds_total" in metrics.text
        assert httpx.get(f"http://127.0.0.1:{port}/nope", timeout=2).status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
