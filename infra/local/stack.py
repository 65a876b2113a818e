"""The embedded local stack behind `sift up` / `sift down`: S3 → buckets → Kafka → MLflow → Label Studio,
plus supervised Sift processes (API, workers).

State lives in pid files under `<data_dir>/run/` so a different process (`sift down`, `sift status`)
can find and stop what `sift up` started. A service whose settings URL is not on loopback is
treated as external (production endpoints) and left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from infra.local.haproxy import HAProxyServer, haproxy_config
from infra.local.labelstudio import LabelStudioServer
from infra.local.mlflow_server import MlflowServer
from infra.local.postgres import PostgresServer
from infra.local.procs import ManagedProcess, ServiceError, free_port, pid_alive, port_open, stop_pid
from infra.local.seaweed import SeaweedServer, ensure_bucket
from infra.local.tansu import TansuBroker
from infra.settings import Settings, get_settings

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
SERVICE_ORDER = ("s3", "kafka", "mlflow", "label-studio")
SUPERVISOR = "supervisor"
LOG_NAMES = {"s3": "seaweedfs", "kafka": "tansu", "mlflow": "mlflow", "label-studio": "label-studio",
             "postgres": "postgres", "lb": "lb"}


class Topology(BaseModel):
    """How many of each part run. More than one of anything is the production shape on one
    machine: PostgreSQL under MLflow and Label Studio, HAProxy in front of the API replicas and
    the brokers (which advertise it). Ports of the hidden members are chosen once and kept."""

    api_replicas: int = Field(default=1, ge=1, le=16)
    workers: int = Field(default=1, ge=1, le=8, description="workers of each kind")
    brokers: int = Field(default=1, ge=1, le=8)
    postgres_port: int | None = None
    broker_ports: list[int] = Field(default_factory=list)
    api_ports: list[int] = Field(default_factory=list)

    @property
    def clustered(self) -> bool:
        return self.api_replicas > 1 or self.brokers > 1 or self.workers > 1

    def with_ports(self) -> Topology:
        taken: set[int] = set()

        def pick() -> int:
            port = free_port(taken)
            taken.add(port)
            return port

        return self.model_copy(update={
            "postgres_port": self.postgres_port or pick(),
            "broker_ports": self.broker_ports[:self.brokers]
            + [pick() for _ in range(self.brokers - len(self.broker_ports))],
            "api_ports": self.api_ports[:self.api_replicas]
            + [pick() for _ in range(self.api_replicas - len(self.api_ports))],
        })


def settings_env(settings: Settings) -> dict[str, str]:
    """SIFT_* variables that reproduce `settings` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        env[f"SIFT_{name.upper()}"] = str(value)
    return env


def local_port(url: str | None, default_scheme: str = "http") -> int | None:
    """Port of a loopback URL or host:port; None when the endpoint is remote (not ours to start)."""
    if not url:
        return None
    parts = urlsplit(url if "://" in url else f"{default_scheme}://{url}")
    if parts.hostname not in LOCAL_HOSTS or parts.port is None:
        return None
    return parts.port


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of a pid: with the pid it identifies a process even after pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class LocalStack:
    def __init__(self, settings: Settings | None = None, *, die_with_parent: bool = False,
                 topology: Topology | None = None) -> None:
        self.settings = settings or get_settings()
        self.data_dir = Path(self.settings.data_dir).resolve()
        self.log_dir = self.data_dir / "logs"
        self.run_dir = self.data_dir / "run"
        self.die_with_parent = die_with_parent
        # given by `sift up`; read back by `sift down`/`sift status` in another process
        saved = self._saved_topology()
        if topology is None:
            self.topology = saved
        elif topology.clustered:  # a second `sift up` finds the members the first one started
            self.topology = topology.model_copy(update=saved.model_dump(include={
                "postgres_port", "broker_ports", "api_ports"})).with_ports()
        else:
            self.topology = topology
        self.kafka_bucket = f"{self.settings.bucket}-kafka"
        self.services: dict[str, Any] = {}
        self.commands: dict[str, ManagedProcess] = {}
        self._restarts: dict[str, list[float]] = {}
        self._stopping = threading.Event()

    def _saved_topology(self) -> Topology:
        with contextlib.suppress(OSError, ValueError):
            return Topology.model_validate_json((self.data_dir / "topology.json").read_text())
        return Topology()

    def _save_topology(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "topology.json").write_text(self.topology.model_dump_json())

    @property
    def service_order(self) -> list[str]:
        """Start order; stop is the reverse. The load balancer comes before the brokers that advertise it."""
        if not self.topology.clustered:
            return list(SERVICE_ORDER)
        return ["s3", "postgres", "lb", *[f"kafka-{i}" for i in range(self.topology.brokers)], "mlflow",
                "label-studio"]

    # ---------------------------------------------------------------- service objects
    def _postgres(self) -> PostgresServer:
        return PostgresServer(self.data_dir / "postgres", port=self.topology.postgres_port, log_dir=self.log_dir,
                              die_with_parent=self.die_with_parent)

    def _lb(self) -> HAProxyServer:
        api_port = local_port(self.settings.public_api_url)
        kafka_port = local_port(self.settings.kafka_bootstrap.split(",")[0], default_scheme="tcp")
        config = haproxy_config(api_port=api_port, api_backends=self.topology.api_ports,
                                kafka_port=kafka_port, kafka_backends=self.topology.broker_ports)
        ports = [p for p in (api_port, kafka_port) if p is not None]
        return HAProxyServer(self.data_dir / "lb", config=config, ports=ports, log_dir=self.log_dir,
                             die_with_parent=self.die_with_parent)

    def _broker(self, index: int) -> TansuBroker:
        s = self.settings
        if not s.s3_endpoint:
            raise ServiceError("the local Kafka brokers store in S3: set SIFT_S3_ENDPOINT")
        return TansuBroker.on_s3(
            self.data_dir / f"kafka-{index}", port=self.topology.broker_ports[index], bucket=self.kafka_bucket,
            s3_endpoint=s.s3_endpoint, s3_access_key=s.s3_access_key, s3_secret_key=s.s3_secret_key,
            s3_region=s.s3_region, log_dir=self.log_dir / f"kafka-{index}",
            die_with_parent=self.die_with_parent, advertised=s.kafka_bootstrap.split(",")[0],
        )

    def _s3(self) -> SeaweedServer | None:
        port = local_port(self.settings.s3_endpoint)
        if port is None:
            return None
        s = self.settings
        return SeaweedServer(
            self.data_dir / "s3", s3_port=port, access_key=s.s3_access_key, secret_key=s.s3_secret_key,
            region=s.s3_region, log_dir=self.log_dir, die_with_parent=self.die_with_parent,
        )

    def _kafka(self) -> TansuBroker | None:
        port = local_port(self.settings.kafka_bootstrap.split(",")[0], default_scheme="tcp")
        if port is None:
            return None
        s = self.settings
        if not s.s3_endpoint:
            raise ServiceError("the local Kafka broker stores in S3: set SIFT_S3_ENDPOINT")
        return TansuBroker.on_s3(
            self.data_dir / "kafka", port=port, bucket=self.kafka_bucket, s3_endpoint=s.s3_endpoint,
            s3_access_key=s.s3_access_key, s3_secret_key=s.s3_secret_key, s3_region=s.s3_region,
            log_dir=self.log_dir, die_with_parent=self.die_with_parent,
        )

    def _mlflow(self) -> MlflowServer | None:
        port = local_port(self.settings.mlflow_tracking_uri)
        if port is None:
            return None
        s = self.settings
        if not s.s3_endpoint:
            raise ServiceError("the local MLflow server keeps artifacts in S3: set SIFT_S3_ENDPOINT")
        return MlflowServer(
            self.data_dir / "mlflow", port=port, s3_endpoint=s.s3_endpoint, s3_access_key=s.s3_access_key,
            s3_secret_key=s.s3_secret_key, s3_region=s.s3_region, bucket=s.bucket,
            log_dir=self.log_dir, die_with_parent=self.die_with_parent,
            backend_store_uri=self._service("postgres").url("mlflow", "postgresql+psycopg2")
            if self.topology.clustered else None,
        )

    def _label_studio(self) -> LabelStudioServer | None:
        port = local_port(self.settings.label_studio_url)
        if port is None:
            return None
        s = self.settings
        return LabelStudioServer(
            self.data_dir / "label-studio", port=port, username=s.label_studio_username,
            password=s.label_studio_password, token=s.label_studio_token, log_dir=self.log_dir,
            die_with_parent=self.die_with_parent,
            postgres=self._service("postgres").connection("labelstudio") if self.topology.clustered else None,
        )

    def _service(self, name: str) -> Any:
        if name not in self.services:
            if name.startswith("kafka-"):
                self.services[name] = self._broker(int(name.split("-")[1]))
                return self.services[name]
            factory = {"s3": self._s3, "kafka": self._kafka, "mlflow": self._mlflow,
                       "label-studio": self._label_studio, "postgres": self._postgres, "lb": self._lb}[name]
            self.services[name] = factory()
        return self.services[name]

    # ---------------------------------------------------------------- pid files
    def _pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _write_pid(self, name: str, proc: ManagedProcess, kind: str, **extra: Any) -> None:
        assert proc.pid is not None
        self._write_record(name, proc.pid, kind, argv=proc.argv, log=str(proc.log_path), **extra)

    def _write_record(self, name: str, pid: int, kind: str, **extra: Any) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {"name": name, "kind": kind, "pid": pid, "start_time": _proc_start_time(pid),
                  "started_at": time.time(), **extra}
        tmp = self._pid_path(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self._pid_path(name))

    def _read_pids(self) -> list[dict[str, Any]]:
        records = []
        if self.run_dir.exists():
            for path in self.run_dir.glob("*.json"):
                with contextlib.suppress(OSError, ValueError):
                    records.append(json.loads(path.read_text()))
        return sorted(records, key=lambda r: r.get("started_at", 0))

    @staticmethod
    def _record_alive(record: Mapping[str, Any]) -> bool:
        pid = int(record["pid"])
        return pid_alive(pid) and _proc_start_time(pid) == record.get("start_time")

    # ---------------------------------------------------------------- lifecycle
    def start(self, with_label_studio: bool = True, timeout: float = 300.0) -> LocalStack:
        """Start every local service in dependency order; on failure stop what this call started."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        alive = {r["name"] for r in self._read_pids() if r.get("kind") == "service" and self._record_alive(r)}
        self._save_topology()
        names = [n for n in self.service_order if with_label_studio or n != "label-studio"]
        started: list[str] = []
        try:
            for name in names:
                service = self._service(name)
                if service is None:
                    continue  # external endpoint
                if name in alive and self._ready(service):
                    continue  # left running by an earlier `sift up`
                service.start(timeout=timeout)
                started.append(name)
                self._write_pid(name, service.process, "service", url=self._url(name))
                if name == "s3":
                    self.ensure_buckets()
        except BaseException:
            for name in reversed(started):
                self._stop_one(name)
            raise
        return self

    def ensure_buckets(self) -> None:
        s3 = self._service("s3")
        client = s3.client if s3 is not None else None
        if client is None:
            from infra.objectstore import ObjectStore

            client = ObjectStore(self.settings).client
        for bucket in (self.settings.bucket, self.kafka_bucket):
            ensure_bucket(client, bucket)

    def _url(self, name: str) -> str:
        s = self.settings
        if name.startswith("kafka-"):
            return f"127.0.0.1:{self.topology.broker_ports[int(name.split('-')[1])]}"
        return {"s3": s.s3_endpoint or "", "kafka": s.kafka_bootstrap, "mlflow": s.mlflow_tracking_uri,
                "label-studio": s.label_studio_url, "lb": f"{s.public_api_url} {s.kafka_bootstrap}",
                "postgres": f"127.0.0.1:{self.topology.postgres_port}"}.get(name, "")

    @staticmethod
    def _ready(service: Any) -> bool:
        try:
            return bool(service.ready())
        except Exception:
            return False

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_port: int | None = None,
        ready_timeout: float = 120.0,
        stop_grace: float = 15.0,
    ) -> ManagedProcess:
        """Start a Sift process (API, worker) with the stack's SIFT_* settings in its environment.

        It is supervised: `supervise()` / `check()` restart it if it exits. With `ready_port`,
        wait until that loopback port accepts connections.
        """
        if name in SERVICE_ORDER or name in self.service_order or name == SUPERVISOR:
            raise ValueError(f"{name!r} is a reserved name")
        # a second `sift up --detach` replaces the first one's process instead of orphaning it
        self._stop_one(name)
        full_env = {**settings_env(self.settings), **(env or {})}
        proc = ManagedProcess(
            name, argv, log_dir=self.log_dir, env=full_env, cwd=cwd, stop_grace=stop_grace,
            die_with_parent=self.die_with_parent,
        ).start()
        self.commands[name] = proc
        self._write_pid(name, proc, "command")
        if ready_port is not None:
            proc.wait_ready(lambda: port_open(ready_port), ready_timeout)
        return proc

    def check(self, max_restarts: int = 5, window_s: float = 300.0) -> list[str]:
        """Restart any supervised process or owned service that died; returns what was restarted.

        A process that dies more than `max_restarts` times in `window_s` is given up on (crash loop).
        """
        restarted = []
        now = time.monotonic()
        dead: list[tuple[str, Any]] = [(n, p) for n, p in self.commands.items() if not p.is_running]
        dead += [(n, s) for n, s in self.services.items()
                 if s is not None and s.process is not None and not s.process.is_running]
        for name, obj in dead:
            if self._stopping.is_set():
                break
            history = [t for t in self._restarts.get(name, []) if now - t < window_s]
            if len(history) >= max_restarts:
                continue
            self._restarts[name] = [*history, now]
            if isinstance(obj, ManagedProcess):
                obj.start()
                self._write_pid(name, obj, "command")
            else:
                with contextlib.suppress(ServiceError):
                    obj.start()
                    self._write_pid(name, obj.process, "service", url=self._url(name))
            restarted.append(name)
        return restarted

    def running_supervisor(self) -> int | None:
        """Pid of a live `sift up` that supervises this stack from another process, if any."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(self._pid_path(SUPERVISOR).read_text())
            pid = int(record["pid"])
            if pid != os.getpid() and self._record_alive(record):
                return pid
        return None

    def supervise(self, poll_s: float = 2.0) -> None:
        """Block, restarting crashed processes, until SIGINT/SIGTERM; then stop everything.

        The supervisor's pid is recorded so that `sift down` from another terminal stops it first;
        otherwise it would restart what `sift down` stopped.
        """
        other = self.running_supervisor()
        if other is not None:
            raise ServiceError(f"`sift up` (pid {other}) already supervises this stack; run `sift down` first")

        def _handle(signum: int, _frame: Any) -> None:
            self._stopping.set()

        previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._write_record(SUPERVISOR, os.getpid(), "supervisor")
        try:
            while not self._stopping.wait(poll_s):
                self.check()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()
            self._pid_path(SUPERVISOR).unlink(missing_ok=True)

    def _stop_supervisor(self, timeout: float = 120.0) -> None:
        """SIGTERM another process's supervisor and wait: it stops what it supervises itself."""
        pid = self.running_supervisor()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # not its group: `make up` shares it
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _stop_one(self, name: str) -> None:
        path = self._pid_path(name)
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            if self._record_alive(record):
                stop_pid(int(record["pid"]), grace=15.0)
        owned = self.commands.get(name) or getattr(self.services.get(name), "process", None)
        if owned is not None:
            owned.stop()
        path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop commands first, then services in reverse dependency order; works from any process."""
        self._stopping.set()
        self._stop_supervisor()
        records = self._read_pids()
        commands = [r["name"] for r in reversed(records) if r.get("kind") == "command"]
        commands += [n for n in self.commands if n not in commands]
        for name in commands:
            self._stop_one(name)
        for name in reversed(self.service_order):
            self._stop_one(name)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per service and command: pid, running, ready, url, log. External services say so."""
        out: dict[str, dict[str, Any]] = {}
        records = {r["name"]: r for r in self._read_pids()}
        for name in self.service_order:
            service = self._service(name)
            record = records.pop(name, None)
            if service is None:
                out[name] = {"external": True, "url": self._url(name)}
                continue
            running = bool(record and self._record_alive(record))
            out[name] = {
                "pid": record["pid"] if record else None,
                "running": running,
                "ready": running and self._ready(service),
                "url": self._url(name),
                "log": str(self.log_dir / (f"{name}/tansu.log" if name.startswith("kafka-")
                                           else f"{LOG_NAMES.get(name, name)}.log")),
            }
        for name, record in records.items():
            out[name] = {"pid": record["pid"], "running": self._record_alive(record), "log": record.get("log"),
                         "argv": record.get("argv")}
        return out

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
