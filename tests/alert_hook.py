"""A loopback webhook receiver that keeps the alert bodies it was sent (the product posts to it for real)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from infra.local.procs import free_port, wait_until


class AlertHook:
    def __init__(self) -> None:
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, kind: str, classifier: str | None = None) -> list[dict]:
        return [b for b in self.bodies
                if b.get("kind") == kind and (classifier is None or b.get("classifier") == classifier)]

    def wait_for(self, kind: str, classifier: str | None = None, timeout: float = 30.0) -> list[dict]:
        wait_until(lambda: bool(self.of(kind, classifier)), timeout)
        return self.of(kind, classifier)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
