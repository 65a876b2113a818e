"""The alerting rules and the dashboard name only metrics the code exports (no server)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

DEPLOY = Path(__file__).resolve().parents[1] / "infra" / "deploy"
# every module that registers metrics; a process imports the ones it uses
METRIC_MODULES = ["classifier.metrics", "infra.metrics", "infra.predictions", "review.metrics", "review.collector",
                  "retrain.alerts", "ops.drift"]
SERIES = re.compile(r"\bsift_[a-z0-9_]+\b")


def exported_series() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "sift-alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "sift-pipeline.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_every_alert_and_panel_names_an_exported_metric() -> None:
    exported = exported_series()
    for expr in rule_expressions() + dashboard_expressions():
        named = set(SERIES.findall(expr))
        assert named, f"no Sift metric in {expr!r}"
        assert named <= exported, f"{expr!r} names {sorted(named - exported)}, which nothing exports"


def test_the_check_catches_a_misspelt_metric() -> None:
    assert "sift_dead_letters_total" in exported_series()
    assert "sift_dead_letter_total" not in exported_series()


def test_alerts_cover_what_operators_must_hear_about() -> None:
    exprs = " ".join(rule_expressions())
    for metric in ("sift_retrain_failures_total", "sift_retrain_running_since_seconds", "sift_dead_letters_total",
                   "sift_spool_oldest_age_seconds", "sift_drift_psi", "sift_model_load_failures_total"):
        assert metric in exprs, metric
