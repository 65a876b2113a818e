"""Health and metrics over HTTP for processes without an API: the pipeline workers.

A worker has no port of its own, so a container orchestrator cannot tell a live worker from a hung
or crashed one. `serve_health` answers `/healthz`, `/readyz` and `/metrics` (Prometheus) from a
daemon thread; `python -m infra.health` is the image's health check for every role.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_PORT = 8000
MLFLOW_PORT = 5000


def serve_health(port: int, alive: Callable[[], bool], host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104
    """Start the endpoints on `port` (0: a free one, see `server_port`); `alive()` decides 200 or 503."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok = alive()
                body = json.dumps({"status": "ok" if ok else "stopped"}).encode()
                self._send(200 if ok else 503, body, "application/json")
            else:
                self._send(404, b'{"detail": "not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: no access log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="health").start()
    return server


def probe_url(cmdline: list[str], env: dict[str, str]) -> str:
    """Which endpoint proves this container's role healthy, from the command it runs (PID 1).

    One image runs every role, so its single HEALTHCHECK has to pick: workers their health port,
    the MLflow role its /health, anything else the API's /healthz. SIFT_HEALTHCHECK_URL overrides.
    """
    if env.get("SIFT_HEALTHCHECK_URL"):
        return env["SIFT_HEALTHCHECK_URL"]
    if "worker" in cmdline:
        return f"http://127.0.0.1:{env.get('SIFT_WORKER_HEALTH_PORT', '8001')}/healthz"
    if any(os.path.basename(arg) == "mlflow" for arg in cmdline):
        return f"http://127.0.0.1:{MLFLOW_PORT}/health"
    port = cmdline[cmdline.index("--port") + 1] if "--port" in cmdline[:-1] else str(API_PORT)
    return f"http://127.0.0.1:{port}/healthz"


def main() -> int:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            cmdline = [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        cmdline = []
    url = sys.argv[1] if len(sys.argv) > 1 else probe_url(cmdline, dict(os.environ))
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - loopback URL
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
