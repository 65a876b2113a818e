"""Label Studio in its own virtualenv, started non-interactively with a known admin and API token."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from infra.local.procs import LOOPBACK, LocalService, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def label_studio_venv() -> Path:
    """SIFT_LABEL_STUDIO_VENV, else `<repo>/.venv-labelstudio` (its deps clash with ours)."""
    return Path(os.environ.get("SIFT_LABEL_STUDIO_VENV") or REPO_ROOT / ".venv-labelstudio")


class LabelStudioServer(LocalService):
    """Label Studio from its own virtualenv, in a clean environment, with a legacy API token."""

    name = "label-studio"
    start_timeout = 240.0
    stop_grace = 15
    ready_interval = 1.0

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        username: str = "admin@sift.local",
        password: str = "sift-local-password",
        token: str = "sift-local-ls-token",
        venv: Path | None = None,
        log_dir: Path | None = None,
        die_with_parent: bool = False,
        postgres: dict[str, str] | None = None,
    ) -> None:
        if len(token) <= 5:
            raise ValueError("Label Studio ignores user tokens of 5 characters or fewer")
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir else self.data_dir
        self.port = port or free_port()
        self.username = username
        self.password = password
        self.token = token
        self.venv = Path(venv) if venv else label_studio_venv()
        self.die_with_parent = die_with_parent
        # host, port, name, user, password of a PostgreSQL database; None: SQLite in data_dir
        self.postgres = postgres
        self.process = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _env(self) -> dict[str, str]:
        """A clean environment: LS settings fall back to bare names (PORT, HOST, USERNAME, …),
        so anything inherited could silently reconfigure it."""
        return {
            "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.data_dir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "VIRTUAL_ENV": str(self.venv),
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            # webhooks go to Sift on loopback; production allows its network explicitly instead
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        } | self._database_env()

    def _database_env(self) -> dict[str, str]:
        if not self.postgres:
            return {}
        pg = self.postgres
        return {"DJANGO_DB": "default", "POSTGRE_HOST": pg["host"], "POSTGRE_PORT": pg["port"],
                "POSTGRE_NAME": pg["name"], "POSTGRE_USER": pg["user"], "POSTGRE_PASSWORD": pg["password"]}

    def _argv(self) -> list[str]:
        return [
            str(self.venv / "bin" / "label-studio"), "start",
            "--no-browser",
            "--internal-host", LOOPBACK,
            "--port", str(self.port),
        ]

    def ready(self) -> bool:
        """/health on *this* port (LS silently moves off a busy port) and token auth both work."""
        health = httpx.get(f"{self.url}/health", timeout=3)
        if health.status_code != 200:
            return False
        api = httpx.get(
            f"{self.url}/api/projects", headers={"Authorization": f"Token {self.token}"}, timeout=5
        )
        return api.status_code == 200

    def start(self, timeout: float | None = None) -> LabelStudioServer:
        if self.is_running:
            return self
        exe = self.venv / "bin" / "label-studio"
        if not exe.exists():
            raise FileNotFoundError(f"{exe} missing: create the Label Studio venv or set SIFT_LABEL_STUDIO_VENV")
        self._launch(self._argv(), self._env(), self.port, timeout)
        return self

