"""Label Studio in its own virtualenv, started non-interactively with a known admin and API token."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from infra.local.procs import LOOPBACK, ManagedProcess, free_port, require_free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def label_studio_venv() -> Path:
    """SIFT_LABEL_STUDIO_VENV, else `<repo>/.venv-labelstudio` (its deps clash with ours)."""
    return Path(os.environ.get("SIFT_LABEL_STUDIO_VENV") or REPO_ROOT / ".venv-labelstudio")


class LabelStudioServer:
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
        self.process: ManagedProcess | None = None

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
        }

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

    def start(self, timeout: float = 240.0) -> LabelStudioServer:
        """First start on an empty data dir runs migrations (80–110 s); later ones take ~10 s."""
        if self.process and self.process.is_running:
            return self
        exe = self.venv / "bin" / "label-studio"
        if not exe.exists():
            raise FileNotFoundError(f"{exe} missing: create the Label Studio venv or set SIFT_LABEL_STUDIO_VENV")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        require_free_port(self.port, "label-studio")
        self.process = ManagedProcess(
            "label-studio", self._argv(), log_dir=self.log_dir, env=self._env(), clean_env=True,
            cwd=self.data_dir, stop_grace=15, die_with_parent=self.die_with_parent,
        ).start()
        self.process.wait_ready(self.ready, timeout, interval=1.0)
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def kill(self) -> None:
        if self.process:
            self.process.kill()

    def restart(self, timeout: float = 240.0) -> LabelStudioServer:
        self.stop()
        return self.start(timeout)

    @property
    def is_running(self) -> bool:
        return bool(self.process and self.process.is_running)
