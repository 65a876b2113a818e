"""Pytest plugin: two lanes, told apart by what a test uses, not by a hand-kept list.

A test is ``integration`` when it requests a service fixture (directly or through fixtures that
depend on one: ``item.fixturenames`` is the closure) or carries the mark itself because it starts
a server without a fixture. Everything else is the fast lane: ``pytest --fast-lane`` deselects the
integration tests and makes starting a server an error — a service launcher (``ManagedProcess``)
or a listening socket in the test process fails the test — so the lane cannot quietly grow one.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

# the fixtures of tests/services.py that start a server (sift_settings needs S3 and Kafka)
SERVICE_FIXTURES = frozenset({"s3_server", "_kafka_broker_session", "kafka_broker",
                              "mlflow_server", "label_studio", "sift_settings"})


class ServerInFastLane(RuntimeError):
    """A fast-lane test started a server: mark it ``integration`` (or request a service fixture)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast-lane", action="store_true",
                     help="unit tests only: deselect integration tests; starting a server fails the test")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: uses a real server (S3, Kafka, MLflow, Label Studio, an HTTP "
                                       "server); set automatically for tests that request a service fixture")


def is_integration(item: pytest.Item) -> bool:
    return (item.get_closest_marker("integration") is not None
            or bool(SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))))


@pytest.hookimpl(tryfirst=True)  # before -m filters on the mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_integration(item) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)
    if config.getoption("--fast-lane"):
        keep = [i for i in items if not is_integration(i)]
        dropped = [i for i in items if is_integration(i)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session", autouse=True)
def _no_server_in_fast_lane(request: pytest.FixtureRequest) -> Iterator[None]:
    """In the fast lane, a service launcher or a listening socket raises ServerInFastLane. Session
    scope, so it is in place before any session fixture could start a server."""
    if not request.config.getoption("--fast-lane"):
        yield
        return
    from infra.local.procs import ManagedProcess

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise ServerInFastLane("a test starts a server in the fast lane; mark it integration")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ManagedProcess, "start", refuse)
        mp.setattr(socket.socket, "listen", refuse)
        yield
