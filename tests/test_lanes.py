"""The two test lanes (tests/lanes.py), run on a small test file in a pytest subprocess: a test that
requests a service fixture lands in the integration lane, and the fast lane refuses a server."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = textwrap.dedent('''
    import socket

    import pytest


    @pytest.fixture
    def via_settings(sift_settings):  # a service fixture one step removed
        return sift_settings


    def test_unit():
        assert 1 + 1 == 2


    def test_uses_services_indirectly(via_settings):
        pass


    @pytest.mark.integration
    def test_marked_by_hand():
        pass


    def test_opens_a_server_unmarked():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()


    def test_starts_a_service_unmarked(tmp_path):
        from infra.local.tansu import TansuBroker

        TansuBroker(tmp_path, port=0).start()
''')


def run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.lanes", "-p", "tests.services", "-p", "no:cacheprovider",
         "-q", "-rA", *args, str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def outcomes(out: str) -> dict[str, str]:
    """test name -> PASSED / FAILED / ERROR, from the -rA summary."""
    got: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in {"PASSED", "FAILED", "ERROR"} and "::" in parts[1]:
            got[parts[1].split("::")[-1]] = parts[0]
    return got


def test_integration_lane_is_what_uses_services_or_is_marked(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "-m", "integration", "--collect-only")
    collected = {line.split("::")[-1] for line in proc.stdout.splitlines() if "::" in line}
    assert collected == {"test_uses_services_indirectly", "test_marked_by_hand"}, proc.stdout


def test_fast_lane_runs_the_rest_and_fails_a_test_that_starts_a_server(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "--fast-lane")
    assert outcomes(proc.stdout) == {"test_unit": "PASSED", "test_opens_a_server_unmarked": "FAILED",
                                     "test_starts_a_service_unmarked": "FAILED"}, proc.stdout
    assert proc.stdout.count("ServerInFastLane") >= 2
    assert "2 deselected" in proc.stdout
