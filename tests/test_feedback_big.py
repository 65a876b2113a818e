"""A 100k-row batch file through a real API server process (uvicorn, loopback) with the CLI's
streaming upload: every row counted, every good row on the topic, server memory bounded. And
hostile rows (deep, huge, invalid Unicode, foreign labels) each refused alone with a reason."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from classifier.engine import ServingEngine
from feedback.cli import upload_via_api
from infra.local.procs import LOOPBACK, free_port
from infra.local.stack import settings_env
from infra.objectstore import ObjectStore
from infra.publisher import EventPublisher
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from sift.app import create_app
from tests.bus_helpers import isolated, read_records, read_topic, wait_until

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
            [sys.executable, "-m", "uvicorn", "--factory", "sift.feedback_app:create_feedback_app",
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
    return len(read_records(settings, short, expect=expect, timeout_s=timeout_s))


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


# ---- hostile rows: each is refused alone, with a reason, and the good rows still go through ----

LABELS = ["sports", "tech"]


@pytest.fixture
def app_client(sift_settings: Settings) -> Iterator[tuple[TestClient, EventPublisher, Settings, str]]:
    """The real app (in process) on the real S3 and broker, with a small upload cap."""
    settings = isolated(sift_settings).model_copy(update={"max_upload_bytes": 3 * 1024 * 1024})
    publisher = EventPublisher(settings)
    app = create_app(settings, engine=ServingEngine(lambda n: None), publisher=publisher)
    try:
        with TestClient(app) as client:
            name = f"host-{uuid.uuid4().hex[:8]}"
            _, key = client.app.state.services.tenants.create(ClassifierConfig(name=name, labels=LABELS))
            client.headers["x-api-key"] = key
            yield client, publisher, settings, name
    finally:
        publisher.close()


def _upload(client: TestClient, name: str, filename: str, data: bytes) -> httpx.Response:
    return client.post(f"/v1/classifiers/{name}/feedback/batch", files={"file": (filename, io.BytesIO(data))})


def test_deep_json_line_is_one_rejected_row(app_client) -> None:  # noqa: ANN001
    client, publisher, settings, name = app_client
    data = b'{"text": "Cup final", "label": "sports"}\n' + b"[" * 200_000 + b"\n" + b'{"text": "New chip"}\n'
    r = _upload(client, name, "deep.jsonl", data)
    assert r.status_code == 202, r.text
    report = r.json()
    assert (report["rows_total"], report["rows_accepted"]) == (3, 2)
    assert report["rejected"] == [{"row": 2, "reason": "JSON nested deeper than 8 levels"}]
    assert publisher.flush(30)
    assert sorted(e.text for e in read_topic(settings, "review-requests", expect=2)) == ["Cup final", "New chip"]


def test_huge_predicted_label_long_line_and_lone_surrogate_are_rejected_per_row(app_client) -> None:  # noqa: ANN001
    client, publisher, settings, name = app_client
    rows = [
        json.dumps({"text": "Cup final", "predicted_label": "x" * 2_000_000}),  # a 2 MB line
        json.dumps({"text": "Rates rise", "predicted_label": "p" * 65}),
        json.dumps({"text": "Rates fall", "predicted_label": "politics"}),
        '{"text": "bad \\ud800 text"}',  # valid JSON, invalid Unicode
        '{"text": "ok", "comment": "\\udfff"}',
        json.dumps({"text": "New chip", "predicted_label": "tech"}),
    ]
    r = _upload(client, name, "hostile.jsonl", "\n".join(rows).encode() + b"\n")
    assert r.status_code == 202, r.text
    report = r.json()
    assert (report["rows_total"], report["rows_accepted"], report["rows_rejected"]) == (6, 1, 5)
    assert report["rejected"] == [
        {"row": 1, "reason": "line longer than 262144 bytes"},
        {"row": 2, "reason": "predicted_label has 65 characters; the limit is 64"},
        {"row": 3, "reason": "predicted_label: unknown label 'politics' (labels: sports, tech)"},
        {"row": 4, "reason": "text: invalid Unicode at character 4 (surrogates not allowed)"},
        {"row": 5, "reason": "comment: invalid Unicode at character 0 (surrogates not allowed)"},
    ]
    assert publisher.flush(30)
    [event] = read_topic(settings, "review-requests", expect=1)
    assert (event.text, event.predicted_label) == ("New chip", "tech")
    # nothing was left in the spool behind an oversized event: every later event still flows
    assert publisher.stats().spool_rows == 0 and publisher.stats().dead_lettered == 0


def test_file_over_the_upload_cap_is_413_before_it_is_read(app_client) -> None:  # noqa: ANN001
    client, _publisher, _settings, name = app_client
    data = b"text\n" + b"a short row\n" * 300_000  # 3.6 MB > the 3 MiB cap of this app
    r = _upload(client, name, "big.csv", data)
    assert r.status_code == 413, r.text
    assert "the limit is 3145728 (SIFT_MAX_UPLOAD_BYTES)" in r.json()["detail"]
    # refused by the body limit before the route read it: nothing of the file was stored
    store = client.app.state.services.store
    assert list(store.list_keys(f"feedback-uploads/{name}/")) == []
