"""The operator's commands as a user runs them: `sift classifiers ...` and `sift train` in subprocesses,
against the real S3 server and MLflow registry, with a real (1-layer) fine-tune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from infra.registry import Registry
from tests.model_fixtures import topic_rows


def sift(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sift.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_onboard_train_and_manage(sift_settings, mlflow_server, tmp_path):
    name = f"cli-{uuid.uuid4().hex[:6]}"
    created = json.loads(sift("classifiers", "create", name, "--labels", "finance,sports,weather",
                              "--threshold", "0.55").stdout)
    assert created["api_key"].startswith(f"sk-{name}-")
    assert created["classifier"]["threshold"] == 0.55

    listed = json.loads(sift("classifiers", "list").stdout)
    assert name in [c["name"] for c in listed]
    sift("classifiers", "update", name, "--threshold", "0.8", "--min-new-labels", "25")
    shown = json.loads(sift("classifiers", "show", name).stdout)
    assert shown["threshold"] == 0.8 and shown["retrain"]["min_new_labels"] == 25

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(r.model_dump_json() for r in topic_rows(20, seed=3)))
    trained = sift("train", name, "--data", str(data), "--layers", "1", "--epochs", "2", "--max-length", "32")
    result = json.loads(trained.stdout[trained.stdout.index("{"):])
    assert result["version"] == "1"
    champion = Registry(sift_settings).champion(name)
    assert champion is not None and champion.version == "1"


def test_cli_errors_are_clear(sift_settings, tmp_path):
    bad = sift("classifiers", "create", "Bad_Name", "--labels", "a,b", check=False)
    assert bad.returncode == 2 and "invalid classifier name" in bad.stderr
    one = sift("classifiers", "create", "fine-name", "--labels", "solo", check=False)
    assert one.returncode == 2 and "at least 2 labels" in one.stderr
    missing = sift("classifiers", "show", "nobody-here", check=False)
    assert missing.returncode == 2 and "unknown classifier 'nobody-here'" in missing.stderr

    name = f"cli-{uuid.uuid4().hex[:6]}"
    sift("classifiers", "create", name, "--labels", "finance,sports")
    data = tmp_path / "bad.csv"
    data.write_text("text,label\nthe match ended,sports\nrain all day,weather\n")
    unknown = sift("train", name, "--data", str(data), check=False)
    assert unknown.returncode == 2 and "does not know" in unknown.stderr and "weather" in unknown.stderr
    broken = tmp_path / "broken.csv"
    broken.write_text("words,category\nx,y\n")
    res = sift("train", name, "--data", str(broken), check=False)
    assert res.returncode == 2 and "text" in res.stderr


def test_review_budget_from_the_cli(sift_settings):
    name = f"cli-{uuid.uuid4().hex[:6]}"
    created = json.loads(sift("classifiers", "create", name, "--labels", "finance,sports",
                              "--review-budget-per-day", "100").stdout)["classifier"]
    assert created["threshold"] is None and created["review_budget_per_day"] == 100  # the budget routes
    sift("classifiers", "update", name, "--threshold", "0.7")
    shown = json.loads(sift("classifiers", "show", name).stdout)
    assert shown["threshold"] == 0.7 and shown["review_budget_per_day"] == 100  # a fixed threshold wins
    bad = sift("classifiers", "update", name, "--review-budget-per-day", "0", check=False)
    assert bad.returncode == 2 and "review_budget_per_day" in bad.stderr
    sift("classifiers", "update", name, "--review-budget-per-day", "250")
    shown = json.loads(sift("classifiers", "show", name).stdout)
    assert shown["threshold"] is None and shown["review_budget_per_day"] == 250
    sift("classifiers", "update", name, "--no-review-budget")
    shown = json.loads(sift("classifiers", "show", name).stdout)
    assert shown["threshold"] == 0.6 and shown["review_budget_per_day"] is None


def test_demo_is_a_top_level_command():
    helped = sift("demo", "--help")
    assert "uncertainty vs random" in helped.stdout and "--part" in helped.stdout
    wrong = sift("demo", "--part", "everything", check=False)
    assert wrong.returncode == 2 and "part must be all, experiment or loop" in wrong.stderr
