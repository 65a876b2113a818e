"""Promotion and rollback: move the ``champion`` alias, then tell every replica through Kafka.

The alias is the truth (replicas re-resolve it on any model-event and poll it as a safety net),
so the event only makes the change prompt: if publishing fails after the alias moved, replicas
still converge within ``model_poll_seconds``, and the error is raised for the caller to alert.

A champion history in the store makes rollback repeatable: after rolling back from v3 to v2,
``previous-champion`` points at v1, so a second rollback goes to v1 rather than back to v3.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from infra.bus import Bus
from infra.events import TOPIC_MODEL_EVENTS, ModelEvent
from infra.objectstore import ObjectStore
from infra.registry import ANY, CHAMPION, PREVIOUS, Registry, model_uri
from infra.settings import Settings
from retrain import paths
from retrain.lock import ClassifierLease, LockBusy

log = logging.getLogger(__name__)

Publish = Callable[[ModelEvent], None]


class RollbackError(RuntimeError):
    """Nothing to roll back to; the message says why."""


def bus_publish(settings: Settings) -> Publish:
    """A publisher that waits for the broker's ack (a promotion is not done before the event is)."""
    bus = Bus(settings, client_id="sift-retrain")

    def publish(event: ModelEvent) -> None:
        producer = bus.producer()
        try:
            bus.send_sync(producer, TOPIC_MODEL_EVENTS, event)
        finally:
            with contextlib.suppress(Exception):
                producer.close(timeout=5)

    return publish


def _history(store: ObjectStore, classifier: str) -> list[dict]:
    return list(store.get_json(paths.champion_history(classifier)) or [])


def _append_history(store: ObjectStore, classifier: str, version: str, action: str) -> None:
    hist = _history(store, classifier)
    hist.append({"version": version, "action": action, "at": datetime.now(UTC).isoformat()})
    store.put_json(paths.champion_history(classifier), hist[-200:])


def promote(registry: Registry, store: ObjectStore, publish: Publish, classifier: str, version: str,
            metrics: dict[str, float] | None = None, *, expected: str | None | object = ANY) -> ModelEvent:
    """Make ``version`` the champion (the old one becomes ``previous-champion``) and publish it.

    ``expected``: compare-and-set against the champion the candidate was judged against
    (``ChampionMoved`` if it changed meanwhile, say by a rollback); the caller holds the lease.
    """
    old = registry.set_champion(classifier, version, expected=expected)
    if old is None or old.version != version:
        if not _history(store, classifier) and old is not None:
            _append_history(store, classifier, old.version, "initial")
        _append_history(store, classifier, version, "promoted")
    registry.set_version_tag(classifier, version, "sift.promoted_at", datetime.now(UTC).isoformat())
    event = ModelEvent(classifier=classifier, version=str(version), action="promoted", metrics=metrics or {},
                       registry_uri=model_uri(classifier, version))
    publish(event)
    log.info("promoted %s v%s (was %s)", classifier, version, old.version if old else "none")
    return event


def rollback(registry: Registry, store: ObjectStore, publish: Publish, classifier: str) -> ModelEvent:
    """``previous-champion`` becomes champion again; the rolled-back version is tagged.

    Holds the classifier's retrain lease, so it never interleaves with a job's promotion."""
    try:
        with ClassifierLease(store, classifier, holder="rollback"):
            return _rollback(registry, store, publish, classifier)
    except LockBusy as exc:
        raise RollbackError(f"{exc}; roll back once it has finished") from exc


def _rollback(registry: Registry, store: ObjectStore, publish: Publish, classifier: str) -> ModelEvent:
    current = registry.champion(classifier)
    target = registry.get_alias(classifier, PREVIOUS)
    if current is None:
        raise RollbackError(f"classifier {classifier!r} has no champion")
    if target is None or target.version == current.version:
        raise RollbackError(f"classifier {classifier!r} has no previous champion to roll back to")
    registry.set_alias(classifier, CHAMPION, target.version)
    registry.set_version_tag(classifier, current.version, "sift.rolled_back_at", datetime.now(UTC).isoformat())
    # the new previous-champion is whatever served before the target, per the history
    hist = [h["version"] for h in _history(store, classifier) if h["action"] != "rolled_back"]
    earlier = [v for v in hist[: hist.index(target.version)]] if target.version in hist else []
    earlier = [v for v in earlier if v not in (target.version, current.version)]
    if earlier:
        registry.set_alias(classifier, PREVIOUS, earlier[-1])
    else:
        registry.delete_alias(classifier, PREVIOUS)
    # drop the rolled-back version from the history so a later rollback never returns to it
    kept = [h for h in _history(store, classifier) if h["version"] != current.version]
    kept.append({"version": target.version, "action": "rolled_back", "at": datetime.now(UTC).isoformat(),
                 "from": current.version})
    store.put_json(paths.champion_history(classifier), kept[-200:])
    event = ModelEvent(classifier=classifier, version=target.version, action="rolled_back",
                       registry_uri=model_uri(classifier, target.version))
    publish(event)
    log.warning("rolled back %s from v%s to v%s", classifier, current.version, target.version)
    return event
