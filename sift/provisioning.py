"""Provisioning steps run when a classifier is created (topics, review project)."""

from __future__ import annotations

from infra.settings import Settings, get_settings
from infra.tenants import ClassifierConfig
from sift.onboarding import Provisioner


def default_provisioners(settings: Settings | None = None) -> list[Provisioner]:
    s = settings or get_settings()

    def kafka_topics(cfg: ClassifierConfig) -> None:
        from infra.bus import Bus

        Bus(s).ensure_topics()

    def review_project(cfg: ClassifierConfig) -> None:
        from infra.objectstore import ObjectStore
        from infra.tenants import TenantStore
        from review.labelstudio import ensure_project

        ensure_project(s, TenantStore(ObjectStore(s)), cfg)

    return [kafka_topics, review_project]
