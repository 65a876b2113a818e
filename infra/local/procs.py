"""Subprocess plumbing shared by the local-stack launchers.

Every service runs in its own process group so a stop reaches its children too (Label Studio and
MLflow fork workers), and logs to a file so a failed start can be explained without a terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A local service failed to start or become ready."""


def free_port(avoid: set[int] | None = None) -> int:
    """A loopback TCP port that is free right now (the OS picks it, so parallel sessions don't clash)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if not avoid or port not in avoid:
            return port


def port_is_free(port: int) -> bool:
    """Bindable the way servers bind (SO_REUSEADDR): TIME_WAIT leftovers of a stopped server
    don't count as busy, a live listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_free_port(port: int, name: str, wait: float = 10.0) -> None:
    """Refuse to start on a busy port: a readiness probe would otherwise talk to a stranger
    (a leftover server, another engineer's) and report success."""
    if not wait_until(lambda: port_is_free(port), wait, interval=0.2):
        raise ServiceError(f"{name}: port {port} on {LOOPBACK} is already in use")


def die_with_parent() -> None:
    """preexec/initializer hook: SIGKILL the child when the parent dies (Linux), so a crashed test
    session leaves no servers behind and a killed retrain worker no candidate still training."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_die_with_parent = die_with_parent


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers kill(0); treat it as gone
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM a process group (by its leader's pid), SIGKILL it after `grace` seconds.

    Used both for our own children and for `sift down`, which only has the pid file.
    """
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    # the leader may be gone while workers linger: the group kill catches those
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class ManagedProcess:
    """One service subprocess: start, readiness wait, graceful stop, hard kill, restart."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        clean_env: bool = False,
        cwd: Path | None = None,
        stop_grace: float = 10.0,
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.cwd = cwd
        self.stop_grace = stop_grace
        self.die_with_parent = die_with_parent
        self.log_path = Path(log_dir) / f"{name}.log"
        # clean_env: only what the caller passes, so stray variables (PORT, HOST, …) can't leak in
        base: dict[str, str] = {} if clean_env else dict(os.environ)
        base.update(env or {})
        self.env = base
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ManagedProcess:
        if self.is_running:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches forked workers
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, check: Callable[[], bool], timeout: float, interval: float = 0.25) -> None:
        """Poll `check` until it returns True; fail fast if the process exits meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running:
                code = self.proc.returncode if self.proc else None
                raise ServiceError(f"{self.name} exited with {code} before ready:\n{self.log_tail()}")
            try:
                if check():
                    return
            except Exception:  # not ready yet, whatever the client says
                pass
            if time.monotonic() >= deadline:
                raise ServiceError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(interval)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM the group, SIGKILL after the grace period, then reap."""
        if self.proc is None:
            return
        stop_pid(self.proc.pid, self.stop_grace if grace is None else grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the group with no grace: simulates a crash in fault tests."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def restart(self) -> ManagedProcess:
        self.stop()
        return self.start()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll a condition without a process to watch (e.g. a port being released)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except Exception:
            pass
        time.sleep(interval)
    return False


class LocalService:
    """What every local server launcher shares: one ManagedProcess, started, probed, stopped alike.

    Subclasses set ``name``/``start_timeout`` and implement ``ready()`` and ``start()``, which
    calls ``_launch`` with their argv and environment.
    """

    name = "service"
    start_timeout = 60.0
    stop_grace = 10.0
    ready_interval = 0.25

    process: ManagedProcess | None = None
    data_dir: Path
    log_dir: Path
    die_with_parent: bool = False

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float | None = None) -> LocalService:
        raise NotImplementedError

    def _launch(self, argv: list[str], env: dict[str, str], port: int, timeout: float | None,
                port_wait: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        require_free_port(port, self.name, wait=port_wait)
        self.process = ManagedProcess(
            self.name, argv, log_dir=self.log_dir, env=env, clean_env=True, cwd=self.data_dir,
            stop_grace=self.stop_grace, die_with_parent=self.die_with_parent,
        ).start()
        self.process.wait_ready(self.ready, timeout or self.start_timeout, interval=self.ready_interval)

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown (fault tests)."""
        if self.process:
            self.process.kill()

    def restart(self, timeout: float | None = None) -> LocalService:
        """Stop (if running) and start again on the same port and data."""
        self.stop()
        return self.start(timeout)

    @property
    def is_running(self) -> bool:
        return bool(self.process and self.process.is_running)
