"""The OpenAPI document is the contract: schemathesis, every check on, against the real app.

A real uvicorn on a free loopback port serves the real app (S3, Kafka, MLflow and a trained
classifier); the schemathesis CLI generates requests from the app's own OpenAPI and runs all
checks: no 5xx, only documented status codes, content types and headers, response bodies that
match their schemas, schema-valid requests accepted and schema-invalid ones rejected.

Two facts the served document cannot know are stated here, as any tenant's client would know
them: the classifier's labels (``label``/``correct_label`` become an enum of them), that 413
is a rejection too (schemathesis' default list of rejections lacks it; the body and text limits
answer 413), and that an uploaded file's bytes can be malformed (400) though any bytes fit the
schema's ``format: binary``. The tenant-facing and ops operations are run; the admin API's mutations (delete a
classifier, start a retrain) are left out: they would remove the tenant under test or train
models mid-run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from infra.local.procs import free_port
from infra.objectstore import ObjectStore
from infra.tenants import ClassifierConfig, TenantStore
from sift.app import create_app
from tests.model_fixtures import register_champion

pytestmark = pytest.mark.timeout(900)

MAX_EXAMPLES = 40  # per operation and phase: ~2 minutes on 2 shared cores
OPERATIONS = r"^/v1/classifiers/\{name\}/(classify|feedback|feedback/batch|review/status)$|^/(healthz|readyz|metrics)$"


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="contract-api", daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the API server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def tenant_schema(app: FastAPI, labels: list[str]) -> dict:
    schema = json.loads(json.dumps(app.openapi()))
    feedback = schema["components"]["schemas"]["FeedbackRequest"]["properties"]
    for field in ("label", "correct_label"):
        feedback[field]["enum"] = labels
    return schema


def test_openapi_contract_holds_under_schemathesis(sift_settings, mlflow_server, tiny_model_dir, tmp_path: Path):
    labels = json.loads((Path(tiny_model_dir) / "sift_model.json").read_text())["labels"]
    tenants = TenantStore(ObjectStore(sift_settings))
    tenants.store.ensure_bucket()
    name = f"contract-{uuid.uuid4().hex[:8]}"
    _, key = tenants.create(ClassifierConfig(name=name, labels=labels, threshold=0.5))
    register_champion(sift_settings, name, Path(tiny_model_dir))
    # schemathesis sends many wrong admin keys on purpose; the per-address limit would answer 429s
    # (documented, and allowed) to the rest of the run, which would then test little
    settings = sift_settings.model_copy(update={"auth_failure_burst": 1_000_000, "serving_runtime": "torch",
                                                "quantize": "none"})
    app = create_app(settings)
    with serving(app) as url:
        admin = {"x-admin-key": settings.admin_key}
        while (ready := httpx.get(f"{url}/readyz", headers=admin, timeout=30)).json()["status"] == "loading models":
            time.sleep(0.2)  # the preload thread's marker; bounded by the test timeout
        assert ready.status_code == 200 and name in ready.json()["models"], ready.text

        schema_file = tmp_path / "openapi.json"
        schema_file.write_text(json.dumps(tenant_schema(app, labels)))
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            f'[parameters]\n"path.name" = "{name}"\n\n'
            '[checks.negative_data_rejection]\n'
            'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", '
            '"429"]\n\n'
            # a file's bytes are not describable in OpenAPI: a random "file" is a malformed one (400, with why)
            '[[operations]]\ninclude-path = "/v1/classifiers/{name}/feedback/batch"\n'
            'checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]\n'
        )
        st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        proc = subprocess.run(
            [st, "--config-file", str(config), "--no-color", "run", str(schema_file), "--url", url,
             "--checks", "all", "--include-path-regex", OPERATIONS, "-H", f"x-api-key: {key}",
             "--max-examples", str(MAX_EXAMPLES), "--seed", "10", "--workers", "1",
             "--generation-database", "none", "--request-timeout", "60", "--phases", "examples,coverage,fuzzing"],
            capture_output=True, text=True, timeout=840, cwd=tmp_path,
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-12_000:]
    assert "No issues found" in out or "0 failures" in out or "passed" in out.lower(), out[-4000:]
