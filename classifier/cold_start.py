"""The engine's cold-start hook: label prototypes for a classifier that has no trained model yet."""

from __future__ import annotations

from typing import Any

from classifier.engine import ColdStart
from infra.settings import resolve_base_model
from infra.tenants import TenantStore


def cold_start_hook(tenants: TenantStore) -> ColdStart:
    """Prototypes are built again only when the labels, descriptions or examples changed (the version
    names them), so the poller's periodic refresh costs one config read."""
    from model.prototype import prototype_model, prototype_version

    def build(name: str, current: Any) -> Any:
        cfg = tenants.get(name)
        if cfg is None or not cfg.cold_start:
            return None
        base = resolve_base_model(cfg.base_model or None)
        version = prototype_version(base, cfg.labels, cfg.label_descriptions, cfg.seed_examples)
        if current is not None and current.version == version:
            return current
        return prototype_model(base, cfg.labels, cfg.label_descriptions, cfg.seed_examples)

    return build
