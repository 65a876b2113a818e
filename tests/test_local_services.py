"""The real local services behave as the rest of Sift assumes (auth, durability, registry round trip)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from infra.local.procs import free_port, pid_alive, port_open, wait_until
from infra.local.seaweed import s3_client
from infra.local.stack import LocalStack
from infra.objectstore import ObjectStore
from infra.settings import Settings, get_settings
from tests.services import KafkaService, LabelStudioService, MlflowService, S3Service


def _settings_for(s3: S3Service) -> Settings:
    return Settings(s3_endpoint=s3.endpoint, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key,
                    s3_region=s3.region, bucket=s3.bucket)


def test_s3_objectstore_round_trip(s3_server: S3Service) -> None:
    store = ObjectStore(_settings_for(s3_server))
    prefix = f"t/{uuid.uuid4().hex}/"
    store.put_json(prefix + "a.json", {"label": "earn"})
    store.put_bytes(prefix + "b.bin", b"\x00\x01")
    assert store.get_json(prefix + "a.json") == {"label": "earn"}
    assert store.get_bytes(prefix + "b.bin") == b"\x00\x01"
    assert store.get_bytes(prefix + "missing") is None
    assert sorted(store.list_keys(prefix)) == [prefix + "a.json", prefix + "b.bin"]
    store.delete(prefix + "b.bin")
    assert not store.exists(prefix + "b.bin")


def test_s3_requires_valid_signature(s3_server: S3Service) -> None:
    bad = s3_client(s3_server.endpoint, s3_server.access_key, "not-the-secret", retries=1)
    with pytest.raises(ClientError) as err:
        bad.list_buckets()
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert httpx.get(f"{s3_server.endpoint}/{s3_server.bucket}/").status_code == 403  # anonymous


def _consume(bootstrap: str, topic: str, group: str, expect: int, timeout_s: float = 30) -> list[bytes]:
    """Read `expect` records as `group`, committing explicit per-record offsets (the product's rule)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expect and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    values.append(record.value)
                    consumer.commit({tp: OffsetAndMetadata(record.offset + 1, None, -1)})
    finally:
        consumer.close()
    return values


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=5)
    try:
        for value in values:
            producer.send(topic, key=b"news", value=value).get(timeout=30)
    finally:
        producer.close()


def test_kafka_round_trip(kafka_broker: KafkaService) -> None:
    topic = f"test.round-trip.{uuid.uuid4().hex[:8]}"
    sent = [f"m{i}".encode() for i in range(20)]
    _produce(kafka_broker.bootstrap, topic, sent)
    assert _consume(kafka_broker.bootstrap, topic, "g-round-trip", expect=20) == sent


def test_kafka_survives_broker_crash_and_restart(kafka_broker: KafkaService) -> None:
    topic = f"test.durable.{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:6]}"
    _produce(kafka_broker.bootstrap, topic, [b"before-1", b"before-2"])
    assert _consume(kafka_broker.bootstrap, topic, group, expect=2) == [b"before-1", b"before-2"]

    kafka_broker.kill()
    assert wait_until(lambda: not port_open(int(kafka_broker.bootstrap.rsplit(":", 1)[1])), timeout=10)
    kafka_broker.restart()

    _produce(kafka_broker.bootstrap, topic, [b"after-1"])
    # committed offsets survived: the group resumes after what it acknowledged
    assert _consume(kafka_broker.bootstrap, topic, group, expect=1) == [b"after-1"]
    # records survived: a new group reads everything
    assert _consume(kafka_broker.bootstrap, topic, f"{group}-new", expect=3) == [b"before-1", b"before-2",
                                                                                 b"after-1"]
    # lag comes from the fetched high watermark (end_offsets is wrong on Tansu)
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        # auto-created topics have several partitions; the key picks one
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        fetched: list[bytes] = []
        deadline = time.monotonic() + 15
        while len(fetched) < 3 and time.monotonic() < deadline:
            fetched += [r.value for recs in consumer.poll(timeout_ms=500).values() for r in recs]
        assert sum(consumer.highwater(tp) or 0 for tp in tps) == 3
    finally:
        consumer.close()

    kafka_broker.stop()  # clean shutdown too
    kafka_broker.start()
    assert _consume(kafka_broker.bootstrap, topic, f"{group}-third", expect=3)[-1] == b"after-1"


def test_mlflow_registry_round_trip(mlflow_server: MlflowService, s3_server: S3Service, tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    experiment_id = client.create_experiment(f"exp-{uuid.uuid4().hex[:8]}")
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    run = client.create_run(experiment_id)
    artifact = tmp_path / "labels.json"
    artifact.write_text('["earn", "acq"]')
    client.log_artifact(run.info.run_id, str(artifact), artifact_path="model")
    client.log_metric(run.info.run_id, "accuracy", 0.91)
    client.set_terminated(run.info.run_id)

    name = f"sift-test-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)

    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == version.version
    assert champion.run_id == run.info.run_id
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="model/labels.json", dst_path=str(tmp_path / "dl")
    )
    assert Path(local).read_text() == '["earn", "acq"]'
    # the artifact really went to the local S3 server, through the tracking server's proxy
    keys = [o["Key"] for o in s3_server.client.list_objects_v2(
        Bucket=s3_server.bucket, Prefix="mlflow-artifacts/").get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/model/labels.json") for k in keys)


def test_sift_settings_points_at_services(sift_settings: Settings, s3_server: S3Service,
                                          kafka_broker: KafkaService) -> None:
    assert get_settings() == sift_settings
    assert sift_settings.s3_endpoint == s3_server.endpoint
    assert sift_settings.kafka_bootstrap == kafka_broker.bootstrap
    # not requested, so not started, and pointing nowhere rather than at a default port
    assert not port_open(int(sift_settings.mlflow_tracking_uri.rsplit(":", 1)[1]))
    out = subprocess.run(
        [sys.executable, "-c", "from infra.settings import get_settings as g; s = g(); "
                               "print(s.bucket, s.kafka_bootstrap, s.data_dir)"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    ).stdout.split()
    assert out == [s3_server.bucket, kafka_broker.bootstrap, str(sift_settings.data_dir)]


@pytest.mark.integration  # starts Tansu itself, without a fixture
def test_servers_die_with_a_crashed_test_session(tmp_path: Path) -> None:
    """die_with_parent: a SIGKILLed session must not leave brokers running."""
    port = free_port()
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from infra.local.tansu import TansuBroker
        b = TansuBroker(Path({str(tmp_path)!r}), port={port}, die_with_parent=True).start()
        print(b.process.pid, flush=True)
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    pid = int(out.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid)


@pytest.mark.integration  # starts the stack itself, without a fixture
def test_local_stack_up_status_down(tmp_path: Path) -> None:
    """`sift up` without Label Studio, then `sift down` from a separate LocalStack (as another process would)."""
    settings = Settings(
        data_dir=tmp_path / "stack", s3_endpoint=f"http://127.0.0.1:{free_port()}",
        kafka_bootstrap=f"127.0.0.1:{free_port()}", mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
        label_studio_url=f"http://127.0.0.1:{free_port()}", bucket=f"sift-stack-{uuid.uuid4().hex[:6]}",
        s3_access_key="stack-key", s3_secret_key="stack-secret-key",
    )
    stack = LocalStack(settings, die_with_parent=True)
    try:
        stack.start(with_label_studio=False)
        api_port = free_port()
        stack.spawn("api", [sys.executable, "-m", "http.server", str(api_port), "--bind", "127.0.0.1"],
                    ready_port=api_port)
        status = stack.status()
        assert all(status[n]["ready"] for n in ("s3", "kafka", "mlflow")), status
        assert not status["label-studio"]["running"]
        assert status["api"]["running"]
        assert ObjectStore(settings).client.head_bucket(Bucket=f"{settings.bucket}-kafka")

        os.kill(status["api"]["pid"], 9)
        assert wait_until(lambda: not pid_alive(status["api"]["pid"]), 10)
        assert stack.check() == ["api"]

        LocalStack(settings).stop()
        after = LocalStack(settings).status()
        assert not any(after[n].get("running") for n in after), after
        assert wait_until(lambda: not port_open(api_port), timeout=10)
    finally:
        stack.stop()


@pytest.mark.labelstudio
def test_label_studio_token_auth(label_studio: LabelStudioService) -> None:
    ok = httpx.get(f"{label_studio.url}/api/projects", headers={"Authorization": f"Token {label_studio.token}"})
    assert ok.status_code == 200
    bad = httpx.get(f"{label_studio.url}/api/projects", headers={"Authorization": "Token not-the-token"})
    assert bad.status_code == 401
    assert httpx.get(f"{label_studio.url}/api/projects").status_code == 401
    who = httpx.get(f"{label_studio.url}/api/current-user/whoami",
                    headers={"Authorization": f"Token {label_studio.token}"})
    assert who.status_code == 200 and who.json()["email"] == label_studio.username


@pytest.mark.labelstudio
def test_label_studio_restart_keeps_data(label_studio: LabelStudioService) -> None:
    headers = {"Authorization": f"Token {label_studio.token}"}
    title = f"restart-{uuid.uuid4().hex[:6]}"
    created = httpx.post(f"{label_studio.url}/api/projects", headers=headers, json={"title": title})
    assert created.status_code == 201, created.text
    label_studio.server.restart(timeout=120)
    projects = httpx.get(f"{label_studio.url}/api/projects", headers=headers, params={"page_size": 100}).json()
    assert title in [p["title"] for p in projects["results"]]


@pytest.mark.labelstudio
def test_sift_settings_include_label_studio_when_requested(sift_settings: Settings,
                                                           label_studio: LabelStudioService) -> None:
    assert sift_settings.label_studio_url == label_studio.url
    assert sift_settings.label_studio_token == label_studio.token
    assert os.environ["SIFT_LABEL_STUDIO_URL"] == label_studio.url


def _stack_settings(tmp_path: Path) -> Settings:
    """Settings for a stack whose services are never started: only supervised commands run."""
    return Settings(
        data_dir=tmp_path / "stack", s3_endpoint=f"http://127.0.0.1:{free_port()}",
        kafka_bootstrap=f"127.0.0.1:{free_port()}", mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
        label_studio_url=f"http://127.0.0.1:{free_port()}", bucket="sift-stack",
    )


@pytest.mark.integration  # spawns HTTP servers itself, without a fixture
def test_down_stops_every_process_of_two_detached_ups(tmp_path: Path) -> None:
    """A second `sift up --detach` replaces the first one's processes; `sift down` then leaves nothing running."""
    settings = _stack_settings(tmp_path)
    first, second = free_port(), free_port()
    LocalStack(settings, die_with_parent=True).spawn(
        "api", [sys.executable, "-m", "http.server", str(first), "--bind", "127.0.0.1"], ready_port=first)
    first_pid = LocalStack(settings).status()["api"]["pid"]
    LocalStack(settings, die_with_parent=True).spawn(
        "api", [sys.executable, "-m", "http.server", str(second), "--bind", "127.0.0.1"], ready_port=second)
    assert not pid_alive(first_pid), "the first run's API was orphaned by the second `sift up`"

    LocalStack(settings).stop()
    # the kernel may release a dead process's listening socket a moment after the process is reaped
    assert wait_until(lambda: not port_open(first) and not port_open(second), timeout=10)
    assert not any(row.get("running") for row in LocalStack(settings).status().values())


@pytest.mark.integration  # spawns HTTP servers itself, without a fixture
def test_down_stops_a_supervising_up_in_another_process(tmp_path: Path) -> None:
    """`sift down` stops the supervisor first, so it cannot restart what `sift down` stopped."""
    settings = _stack_settings(tmp_path)
    port = free_port()
    script = (
        "import sys\n"
        "from infra.local.stack import LocalStack\n"
        "from infra.settings import Settings\n"
        f"stack = LocalStack(Settings(data_dir={str(settings.data_dir)!r}), die_with_parent=True)\n"
        f"stack.spawn('api', [sys.executable, '-m', 'http.server', '{port}', '--bind', '127.0.0.1'],\n"
        f"            ready_port={port})\n"
        "stack.supervise(poll_s=0.2)\n"
    )
    supervisor = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                                  start_new_session=True)
    try:
        assert wait_until(lambda: LocalStack(settings).running_supervisor() == supervisor.pid, timeout=60)
        assert wait_until(lambda: port_open(port), timeout=60)
        api_pid = LocalStack(settings).status()["api"]["pid"]

        LocalStack(settings).stop()
        assert supervisor.wait(timeout=60) == 0
        assert not pid_alive(api_pid) and wait_until(lambda: not port_open(port), timeout=10)
        # the supervisor is gone, so nothing can restart the API any more: the state is final
        assert not any(row.get("running") for row in LocalStack(settings).status().values())
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
