"""PostgreSQL from Debian's packages as the local database of MLflow and Label Studio (cluster shape).

Production runs both on PostgreSQL; the local cluster does the same so that what the cluster test
proves holds there. PostgreSQL refuses to run as root: as root the server runs as the ``postgres``
user, over a data directory it owns under its own home (``/var/lib/postgresql/sift/<hash of
data_dir>``), since the ``postgres`` user cannot reach into root's private folders.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from infra.local.procs import LOOPBACK, LocalService, ServiceError, free_port, port_open

PG_ROOTS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
USER = "sift"
PASSWORD = "sift-local-db"  # loopback only: the server listens on 127.0.0.1
DATABASES = ("mlflow", "labelstudio")
POSTGRES_HOME = Path("/var/lib/postgresql/sift")


def pg_bin(name: str) -> str:
    """initdb/postgres/psql live in /usr/lib/postgresql/<v>/bin on Debian, not on PATH."""
    for root in PG_ROOTS:
        if (root / name).exists():
            return str(root / name)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"{name} not found: install Debian's postgresql (make install-cluster)")
    return found


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin") or "runuser"
    return [runuser, "-u", "postgres", "--", *argv]


class PostgresServer(LocalService):
    """One PostgreSQL cluster in ``data_dir``: created on first start with a password user and the
    MLflow and Label Studio databases."""

    name = "postgres"
    start_timeout = 60.0
    stop_grace = 15
    ready_interval = 0.3

    def __init__(self, data_dir: Path, *, port: int | None = None, log_dir: Path | None = None,
                 die_with_parent: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir else self.data_dir
        self.port = port or free_port()
        self.die_with_parent = die_with_parent
        self.process = None

    @property
    def home(self) -> Path:
        """Where the cluster and its socket live: data_dir, or a folder the postgres user owns when root."""
        if os.geteuid() != 0:
            return self.data_dir
        return POSTGRES_HOME / hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    def remove_data(self) -> None:
        """Delete the database files (a throwaway cluster, say a test's); the server must be stopped."""
        shutil.rmtree(self.home, ignore_errors=True)

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{USER}:{PASSWORD}@{LOOPBACK}:{self.port}/{database}"

    def connection(self, database: str) -> dict[str, str]:
        """host, port, name, user, password of one of its databases (Label Studio takes them apart)."""
        return {"host": LOOPBACK, "port": str(self.port), "name": database, "user": USER, "password": PASSWORD}

    def _psql(self, sql: str, *, check: bool, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run([pg_bin("psql"), "-h", LOOPBACK, "-p", str(self.port), "-U", USER, "-d", "postgres",
                               "-Atc", sql], env={**os.environ, "PGPASSWORD": PASSWORD}, capture_output=True,
                              text=True, timeout=timeout, check=check)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def _initdb(self) -> None:
        for folder in (self.home.parent, self.home):
            folder.mkdir(parents=True, exist_ok=True)
            self._chown(folder)
        pwfile = self.home / "pw"
        pwfile.write_text(PASSWORD)
        self._chown(pwfile)
        subprocess.run(_as_owner([pg_bin("initdb"), "-D", str(self.pgdata), "-U", USER, "--pwfile", str(pwfile),
                                  "-A", "scram-sha-256", "-E", "UTF8", "--locale", "C.UTF-8"]),
                       check=True, capture_output=True, cwd="/")
        pwfile.unlink()

    def ready(self) -> bool:
        return port_open(self.port) and self._psql("select 1", check=False).returncode == 0

    def _create_databases(self) -> None:
        existing = self._psql("select datname from pg_database", check=True, timeout=60).stdout.split()
        for db in DATABASES:
            if db not in existing:
                self._psql(f"create database {db}", check=True, timeout=60)

    def start(self, timeout: float | None = None) -> PostgresServer:
        if self.is_running:
            return self
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = _as_owner([pg_bin("postgres"), "-D", str(self.pgdata), "-h", LOOPBACK, "-p", str(self.port),
                          "-k", str(self.home), "-c", "max_connections=200", "-c", "fsync=on"])
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.data_dir)}
        self._launch(argv, env, self.port, timeout)
        self._create_databases()
        return self
