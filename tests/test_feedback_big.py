"""A 100k-row batch file through a real API server process (uvicorn, loopback) with the CLI's
streaming upload: every row counted, every good row on the topic, server memory bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from feedback.cli import upload_via_api
from infra.local.procs import LOOPBACK, free_port
from infra.local.stack import settings_env
from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from tests.bus_helpers import isolated, wait_until

pytestmark = pytest.mark.timeout(400)
ROWS = 100_000


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def feedback_server(settings: Settings, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, **settings_env(settings)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "feedback.standalone:create_feedback_app",
             "--host", LOOPBACK, "--port", str(port), "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1],
        )
    url = f"http://{LOOPBACK}:{port}"
    try:
        ok = wait_until(lambda: proc.poll() is None and httpx.get(url + "/healthz", timeout=1).status_code == 200
                        if _port_open(port) else False, 60, 0.3)
        assert ok, log.read_text()[-3000:]
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(30)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


@pytest.fixture
def server(sift_settings: Settings, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Settings]]:
    settings = isolated(sift_settings)
    for url, proc in feedback_server(settings, tmp_path / "server.log"):
        yield url, proc, settings


def _count_topic(settings: Settings, short: str, expect: int, timeout_s: float = 120) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None,
                             auto_offset_reset="earliest", max_poll_records=5000)
    tp = TopicPartition(settings.topic_prefix + short, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    n, deadline = 0, time.monotonic() + timeout_s
    try:
        while n < expect and time.monotonic() < deadline:
            n += sum(len(r) for r in consumer.poll(timeout_ms=500).values())
    finally:
        consumer.close()
    return n


def test_100k_row_file_streams_with_bounded_memory(server, tmp_path: Path) -> None:  # noqa: ANN001
    url, proc, settings = server
    name = f"big-{uuid.uuid4().hex[:8]}"
    _, key = TenantStore(ObjectStore(settings)).create(ClassifierConfig(name=name, labels=["sports", "tech"]))
    path = tmp_path / "big.csv"
    filler = "lorem ipsum dolor sit amet " * 7  # ~190 chars a row: ~20 MB in all
    with open(path, "w") as f:
        f.write("text,label\n")
        for i in range(ROWS):
            label = "unknown" if i % 1000 == 999 else ("sports" if i % 2 else "tech")
            f.write(f"row {i} {filler},{label}\n")
    size_mb = path.stat().st_size / 1e6

    baseline = _rss_kb(proc.pid, "VmRSS")
    t0 = time.perf_counter()
    status, report = upload_via_api(url, key, name, path, progress=False)
    elapsed = time.perf_counter() - t0
    assert status == 202, report
    assert (report["rows_total"], report["rows_accepted"], report["rows_rejected"]) == (ROWS, ROWS - 100, 100)
    assert len(report["rejected"]) == 100 and report["rejected"][0] == {
        "row": 1000, "reason": "unknown label 'unknown' (labels: sports, tech)"}
    peak = _rss_kb(proc.pid, "VmHWM")
    growth_mb = (peak - baseline) / 1024
    print(f"\n{ROWS} rows, {size_mb:.1f} MB in {elapsed:.1f}s; server RSS {baseline / 1024:.0f} MB -> peak "
          f"{peak / 1024:.0f} MB (+{growth_mb:.0f} MB)")
    # loose bound: well under the file size x Python object overhead a non-streaming parse would cost
    assert growth_mb < 4 * size_mb, f"server grew by {growth_mb:.0f} MB for a {size_mb:.0f} MB file"
    assert _count_topic(settings, "review-requests", ROWS - 100) == ROWS - 100
