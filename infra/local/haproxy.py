"""HAProxy from Debian's packages as the cluster's load balancer: one HTTP frontend over the API
replicas (health-checked on ``/readyz``) and one TCP frontend over the Kafka brokers.

Tansu brokers are stateless over one shared store, so every broker advertises the load
balancer's address: clients know one "broker" and, when theirs dies, reconnect to a live one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from infra.local.procs import LOOPBACK, LocalService, ServiceError, port_open


def haproxy_config(*, api_port: int | None, api_backends: list[int], kafka_port: int | None,
                   kafka_backends: list[int]) -> str:
    lines = [
        "global", "  maxconn 4096",
        "defaults", "  timeout connect 2s", "  timeout client 120s", "  timeout server 120s",
        "  timeout tunnel 1h", "  retries 2",
    ]
    if api_port is not None:
        lines += [
            f"frontend api\n  mode http\n  bind {LOOPBACK}:{api_port}\n  default_backend api_replicas",
            # a request on a connection to a replica that just died is retried on another one
            "backend api_replicas\n  mode http\n  balance roundrobin\n  option redispatch\n"
            "  retry-on conn-failure empty-response response-timeout\n"
            "  option httpchk GET /readyz\n  default-server inter 1s fall 2 rise 2",
        ]
        lines += [f"  server api{i} {LOOPBACK}:{port} check" for i, port in enumerate(api_backends)]
    if kafka_port is not None:
        lines += [
            f"frontend kafka\n  mode tcp\n  bind {LOOPBACK}:{kafka_port}\n  default_backend brokers",
            "backend brokers\n  mode tcp\n  balance leastconn\n  default-server inter 1s fall 2 rise 2",
        ]
        lines += [f"  server broker{i} {LOOPBACK}:{port} check" for i, port in enumerate(kafka_backends)]
    return "\n".join(lines) + "\n"


class HAProxyServer(LocalService):
    name = "lb"
    start_timeout = 20.0
    stop_grace = 5

    def __init__(self, data_dir: Path, *, config: str, ports: list[int], log_dir: Path | None = None,
                 die_with_parent: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir else self.data_dir
        self.config = config
        self.ports = ports
        self.die_with_parent = die_with_parent
        self.process = None

    def ready(self) -> bool:
        return all(port_open(p) for p in self.ports)

    def start(self, timeout: float | None = None) -> HAProxyServer:
        if self.is_running:
            return self
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(exe).exists():
            raise ServiceError("haproxy not found: install Debian's haproxy (make install-cluster)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.data_dir / "haproxy.cfg"
        cfg.write_text(self.config)
        # -db: foreground, no daemon; the first port is checked free, the rest by HAProxy's bind
        self._launch([exe, "-db", "-f", str(cfg)], {"PATH": "/usr/sbin:/usr/bin:/bin"}, self.ports[0], timeout)
        return self
