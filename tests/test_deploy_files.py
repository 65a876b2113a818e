"""The production files agree with the code: what can be checked without a Docker engine or helm.

Each check fails when the code moves and the deployment files do not: a renamed setting, a new
worker, a new top-level package the image would not copy, a secret given a default.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from infra.settings import Settings
from sift.cli import worker

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "infra" / "deploy"
SETTING_VARS = {f"SIFT_{name.upper()}" for name in Settings.model_fields}
WORKERS = {c.name for c in worker.registered_commands}
SECRETS = {"SIFT_ADMIN_KEY", "SIFT_S3_SECRET_KEY", "SIFT_LABEL_STUDIO_TOKEN", "SIFT_WEBHOOK_SECRET"}


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_sift_services_use_real_settings_and_commands():
    compose = _compose()
    sift_services = {name: svc for name, svc in compose["services"].items()
                     if svc.get("build", {}).get("dockerfile") == "infra/deploy/Dockerfile"}
    assert "api" in sift_services
    workers = set()
    for name, svc in sift_services.items():
        env = svc["environment"]
        assert set(env) <= SETTING_VARS, f"{name}: unknown settings {set(env) - SETTING_VARS}"
        command = svc.get("command")
        if command is not None:
            assert command[0] == "worker" and command[1] in WORKERS, f"{name}: {command}"
            workers.add(command[1])
    assert workers == WORKERS, "every `sift worker` has a compose service"
    # secrets must be supplied by the operator, never defaulted
    env = sift_services["api"]["environment"]
    for var in SECRETS:
        assert ":?" in str(env[var]), f"{var} has a default in docker-compose.yml"


def test_compose_dependencies_exist():
    services = _compose()["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else list(deps):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_image_copies_every_package_and_pins_cpu_torch():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        pkg = pattern.rstrip("*")
        assert re.search(rf"^COPY {pkg} \./{pkg}$", dockerfile, re.M), f"the image does not copy {pkg}/"
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in dockerfile
    assert 'ENTRYPOINT ["sift"]' in dockerfile and 'CMD ["serve"' in dockerfile


def test_helm_values_match_settings_and_workers():
    chart = yaml.safe_load((DEPLOY / "helm" / "sift" / "Chart.yaml").read_text())
    values = yaml.safe_load((DEPLOY / "helm" / "sift" / "values.yaml").read_text())
    assert chart["name"] == "sift" and chart["apiVersion"] == "v2"
    assert set(values["settings"]) <= SETTING_VARS
    assert set(values["workers"]) == WORKERS
    templates = "".join(p.read_text() for p in (DEPLOY / "helm" / "sift" / "templates").glob("*.yaml"))
    assert values["api"]["readinessPath"] == "/readyz" and "readinessProbe" in templates
    assert "maxUnavailable: 0" in templates, "rolling updates must keep every serving replica"
    assert '"worker", "{{ $name }}"' in templates
