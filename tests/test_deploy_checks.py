"""Tools run on the production files: `docker-compose config` and checkov (Dockerfile, rendered chart).

`make test-deploy` installs both (Debian's docker-compose, checkov in .venv-deploy); they are not
skipped when missing: a deploy check that silently does not run proves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_deploy_files import CHART, DEPLOY, PRODUCTION_VALUES, ROOT, helm

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]
CHECKOV = Path(os.environ.get("SIFT_CHECKOV", ROOT / ".venv-deploy" / "bin" / "checkov"))
COMPOSE_ENV = {"S3_SECRET_KEY": "s3-secret", "LABEL_STUDIO_TOKEN": "ls-token", "WEBHOOK_SECRET": "hook",
               "ADMIN_KEY": "admin", "POSTGRES_PASSWORD": "pg", "LABEL_STUDIO_PASSWORD": "ls-password"}


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed: run `make test-deploy`"
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    return subprocess.run([exe, "-f", str(DEPLOY / "docker-compose.yml"), "config"], env={**clean, **env},
                          capture_output=True, text=True, cwd=DEPLOY)


def test_docker_compose_config_accepts_the_file_and_requires_every_secret():
    result = _compose_config(COMPOSE_ENV)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["services"]["api"]["environment"]["SIFT_ADMIN_KEY"] == "admin"
    for missing in COMPOSE_ENV:
        result = _compose_config({k: v for k, v in COMPOSE_ENV.items() if k != missing})
        assert result.returncode != 0 and f"set {missing}" in result.stderr, missing


def _checkov(args: list[str]) -> dict[str, list[str]]:
    """Run checkov with no skip; returns failed check id -> resources."""
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run `make test-deploy`"
    result = subprocess.run(["nice", "-n", "5", str(CHECKOV), *args, "--skip-download", "-o", "json"],
                            capture_output=True, text=True, cwd=ROOT)
    reports = json.loads(result.stdout)
    failed: dict[str, list[str]] = {}
    for report in reports if isinstance(reports, list) else [reports]:
        assert report["summary"]["passed"] > 0, report["summary"]
        for check in report["results"]["failed_checks"]:
            failed.setdefault(check["check_id"], []).append(check["resource"])
    return failed


def test_checkov_finds_nothing_outside_the_justified_skips(tmp_path):
    skips = yaml.safe_load((DEPLOY / "checkov-skips.yaml").read_text())
    assert all(isinstance(reason, str) and len(reason) > 40 for reason in skips.values()), "each skip says why"
    chart = helm.Chart.load(str(CHART))
    for label, values in (("default", None), ("production", PRODUCTION_VALUES)):
        rendered = chart.render(values, name="sift", namespace="sift")
        docs = [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]
        (tmp_path / f"{label}.yaml").write_text(yaml.safe_dump_all(docs))
    failed = _checkov(["-d", str(tmp_path), "--framework", "kubernetes"])
    failed.update(_checkov(["-f", str(DEPLOY / "Dockerfile"), "--framework", "dockerfile"]))
    unjustified = {k: v for k, v in failed.items() if k not in skips}
    assert not unjustified, f"checkov failed checks with no reason in checkov-skips.yaml: {unjustified}"
    stale = set(skips) - set(failed)
    assert not stale, f"checkov-skips.yaml skips checks that pass now: {stale}"
