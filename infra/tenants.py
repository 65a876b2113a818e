"""Classifier (tenant) configuration, stored durably in the object store.

Layout: ``classifiers/<name>/config.json`` and ``api-keys/<sha256>.json`` (key -> classifier),
so any replica can authenticate any key without local state.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from infra.objectstore import ObjectStore

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class TenantError(ValueError):
    """A request about classifiers that cannot be carried out; the message is user-facing."""


class NotFound(TenantError):
    pass


class AlreadyExists(TenantError):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise TenantError(
            f"invalid classifier name {name!r}: use 2-63 characters, lowercase letters, digits and '-', "
            "starting with a letter"
        )
    return name


class RetrainPolicy(BaseModel):
    """When a classifier retrains and what a candidate must do to be promoted."""

    min_new_labels: int = Field(default=100, ge=1, description="retrain after this many new reviewed labels")
    schedule: str | None = Field(default=None, description="'daily', 'weekly' or a 5-field cron expression")
    # the promotion gate (retrain/bless.py): a paired bootstrap of champion and candidate on the evaluation set
    promotion_margin: float = Field(default=0.0, ge=0, le=1, description="macro-F1 gain over the champion")
    max_f1_loss: float = Field(default=0.02, ge=0, le=1, description="the gain interval's lower bound must be "
                               "above minus this: how much worse than the champion a candidate may plausibly be")
    recall_tolerance: float = Field(default=0.05, ge=0, le=1, description="per-class recall drop that refuses, "
                                    "when significant and the class has min_class_support evaluation texts")
    min_class_support: int = Field(default=20, ge=1, description="evaluation texts a class needs before its "
                                   "recall drop can refuse a candidate")
    baseline_floor: float = Field(default=0.05, ge=0, le=1, description="the first model's macro-F1 gain over "
                                  "the majority-class baseline")
    gate_confidence: float = Field(default=0.95, gt=0.5, lt=1, description="two-sided bootstrap interval level")
    bootstrap_resamples: int = Field(default=1000, ge=100, le=100_000)
    bootstrap_seed: int = 0
    eval_min_per_class: int = Field(default=10, ge=0, description="reviewed, never-trained texts a class's "
                                    "evaluation set is topped up to (while its training texts stay at least as "
                                    "many, and at least min_examples_per_label)")
    min_examples_per_label: int = Field(default=5, ge=1)
    eval_share: float = Field(default=0.2, gt=0, lt=1)
    epochs: int = Field(default=2, ge=1, le=50)
    learning_rate: float = Field(default=1e-4, gt=0, description="encoder rate; the new head trains at 1e-3")
    batch_size: int = Field(default=16, ge=1, le=512)
    max_length: int = Field(default=128, ge=8, le=512)
    time_budget_s: float = Field(default=900, gt=0)
    alert_webhook_url: str | None = None


class RetentionPolicy(BaseModel):
    """How long a classifier's data is kept (``sift gc`` and the gc worker apply it)."""

    predictions_days: float = Field(default=30, gt=0, description="stored prediction texts (feedback by id)")
    uploads_days: float = Field(default=90, gt=0, description="raw feedback uploads and their reports")
    finished_tasks_days: float = Field(default=30, gt=0, description="finished review tasks, once collected")
    keep_versions: int = Field(default=5, ge=1, description="newest model versions kept besides the champion's lineage")


class DriftPolicy(BaseModel):
    """How predictions are compared with the champion's evaluation reference."""

    window_hours: float = Field(default=24, gt=0, description="rolling window of stored predictions")
    alert_psi: float = Field(default=0.2, gt=0, description="alert when label or confidence PSI exceeds this")
    min_predictions: int = Field(default=100, ge=1, description="no score below this many predictions")


class ApiKeyRecord(BaseModel):
    key_id: str
    sha256: str
    created_at: datetime


DEFAULT_THRESHOLD = 0.6


class ClassifierConfig(BaseModel):
    name: str
    labels: list[str]
    # None: derived from review_budget_per_day (a quantile of recent confidences); a number wins
    threshold: float | None = Field(default=DEFAULT_THRESHOLD, gt=0, le=1)
    review_budget_per_day: int | None = Field(
        default=None, ge=1, le=10_000_000, description="about this many texts a day go to review (threshold None)")
    base_model: str = ""
    description: str = ""
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy)
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    review_window: int = Field(default=50, ge=1, le=10_000, description="open Label Studio tasks kept queued")
    review_sample_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of served texts sent to review as an unbiased audit sample, "
        "whatever their confidence (random review priority)")
    near_duplicate_similarity: float = Field(
        default=0.6, gt=0, le=1,
        description="a model-doubt text this similar (shingle Jaccard) to an open task waits for it; 1: off")
    # cold start: with no trained model yet, serve label prototypes from the base encoder (model/prototype.py)
    cold_start: bool = Field(default=True, description="serve label-name prototypes until a model is trained")
    label_descriptions: dict[str, str] = Field(
        default_factory=dict, description="label -> a sentence saying what it covers (cold start)")
    seed_examples: dict[str, list[str]] = Field(
        default_factory=dict, description="label -> a few example texts (cold start; at most 20 per label)")
    label_studio_project_id: int | None = None
    # Label Studio sends it with every webhook of this classifier's project; None: SIFT_WEBHOOK_SECRET.
    # Rotated by `sift review rotate-webhook-secret` / POST /v1/admin/classifiers/{name}/webhook-secret
    webhook_secret: str | None = Field(default=None, repr=False)
    # per API key, per API replica; generous: it stops a runaway client, not normal bursts
    rate_limit_per_s: float = Field(default=200.0, gt=0, description="requests per second per API key")
    rate_limit_burst: int = Field(default=400, ge=1, description="requests a key may send at once")
    api_keys: list[ApiKeyRecord] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)

    @model_validator(mode="after")
    def _cold_start_labels(self) -> ClassifierConfig:
        for field, given in (("label_descriptions", self.label_descriptions), ("seed_examples", self.seed_examples)):
            unknown = sorted(set(given) - set(self.labels))
            if unknown:
                raise ValueError(f"{field} names labels the classifier does not have: {unknown}")
        if any(len(v) > 1000 for v in self.label_descriptions.values()):
            raise ValueError("a label description is longer than 1000 characters")
        if any(len(v) > 20 or any(not t.strip() or len(t) > 2000 for t in v) for v in self.seed_examples.values()):
            raise ValueError("seed_examples: at most 20 per label, each 1 to 2000 characters")
        return self

    @model_validator(mode="before")
    @classmethod
    def _threshold_or_budget(cls, data: Any) -> Any:
        """No threshold given: derived when there is a budget, else the default (stored configs
        always carry their threshold, so they keep it)."""
        if isinstance(data, dict) and data.get("threshold") is None:
            data = dict(data)
            data["threshold"] = None if data.get("review_budget_per_day") is not None else DEFAULT_THRESHOLD
        return data

    @property
    def budget_routing(self) -> bool:
        """The review budget, not a fixed threshold, decides what goes to review."""
        return self.threshold is None and self.review_budget_per_day is not None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError("a classifier needs at least 2 labels")
        if len(v) > 200:
            raise ValueError("at most 200 labels")
        bad = [label for label in v if not LABEL_RE.match(label)]
        if bad:
            raise ValueError(
                f"invalid label(s) {bad}: 1-64 characters, letters, digits, '_', '.', '-', not starting "
                "with punctuation"
            )
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        return v



def hash_key(key: str) -> str:
    """Any string hashes, header bytes decoded as latin-1 and lone surrogates included."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


TenantChange = Callable[[str, str], None]
"""Called with (classifier, change) after a change is stored; ``infra.tenant_events`` publishes it."""


class TenantStore:
    """``on_change`` tells other replicas (their caches) about every stored change."""

    def __init__(self, store: ObjectStore, on_change: TenantChange | None = None) -> None:
        self.store = store
        self.on_change = on_change

    def _changed(self, name: str, change: str) -> None:
        if self.on_change is not None:
            self.on_change(name, change)

    @staticmethod
    def _config_key(name: str) -> str:
        return f"classifiers/{name}/config.json"

    def get(self, name: str) -> ClassifierConfig | None:
        data = self.store.get_json(self._config_key(name))
        return None if data is None else ClassifierConfig.model_validate(data)

    def require(self, name: str) -> ClassifierConfig:
        cfg = self.get(name)
        if cfg is None:
            raise NotFound(f"unknown classifier {name!r}")
        return cfg

    def list(self) -> list[ClassifierConfig]:
        out = []
        for key in self.store.list_keys("classifiers/"):
            if key.endswith("/config.json"):
                data = self.store.get_json(key)
                if data is not None:
                    out.append(ClassifierConfig.model_validate(data))
        return sorted(out, key=lambda c: c.name)

    def _save(self, cfg: ClassifierConfig) -> ClassifierConfig:
        cfg.updated_at = _now()
        self.store.put_json(self._config_key(cfg.name), cfg.model_dump(mode="json"))
        return cfg

    def save(self, cfg: ClassifierConfig) -> ClassifierConfig:
        self._save(cfg)
        self._changed(cfg.name, "updated")
        return cfg

    def create(self, cfg: ClassifierConfig) -> tuple[ClassifierConfig, str]:
        """Store a new classifier and issue its first API key (returned once, stored hashed)."""
        if self.get(cfg.name) is not None:
            raise AlreadyExists(f"classifier {cfg.name!r} already exists")
        key = self._new_key(cfg)
        self._save(cfg)
        self._changed(cfg.name, "created")
        return cfg, key

    def _new_key(self, cfg: ClassifierConfig) -> str:
        key = f"sk-{cfg.name}-{secrets.token_urlsafe(24)}"
        digest = hash_key(key)
        record = ApiKeyRecord(key_id=digest[:12], sha256=digest, created_at=_now())
        cfg.api_keys.append(record)
        self.store.put_json(f"api-keys/{digest}.json", {"classifier": cfg.name, "key_id": record.key_id})
        return key

    def issue_key(self, name: str) -> str:
        cfg = self.require(name)
        key = self._new_key(cfg)
        self._save(cfg)
        self._changed(name, "key_issued")
        return key

    def revoke_key(self, name: str, key_id: str) -> None:
        cfg = self.require(name)
        keep = [k for k in cfg.api_keys if k.key_id != key_id]
        if len(keep) == len(cfg.api_keys):
            raise NotFound(f"classifier {name!r} has no key {key_id!r}")
        for k in cfg.api_keys:
            if k.key_id == key_id:
                self.store.delete(f"api-keys/{k.sha256}.json")
        cfg.api_keys = keep
        self._save(cfg)
        self._changed(name, "key_revoked")

    def delete(self, name: str) -> ClassifierConfig:
        cfg = self.require(name)
        for k in cfg.api_keys:
            self.store.delete(f"api-keys/{k.sha256}.json")
        self.store.delete(self._config_key(name))
        self._changed(name, "deleted")
        return cfg

    def key_owner(self, key: str) -> str | None:
        data = self.store.get_json(f"api-keys/{hash_key(key)}.json")
        return None if data is None else data["classifier"]


class TenantCache:
    """Read-through cache so the request path does not hit the object store every time.

    Bounded (LRU, ``max_entries`` per map) and caching misses only briefly (``negative_ttl_s``):
    a flood of random keys neither grows memory nor hides a key issued a moment ago for long.
    """

    def __init__(self, tenants: TenantStore, ttl_s: float = 2.0, max_entries: int = 10_000,
                 negative_ttl_s: float = 0.5) -> None:
        self.tenants = tenants
        self.ttl_s = ttl_s
        self.negative_ttl_s = min(negative_ttl_s, ttl_s)
        self.max_entries = max_entries
        self._configs: OrderedDict[str, tuple[float, ClassifierConfig | None]] = OrderedDict()
        self._owners: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def _hit(self, cache: OrderedDict[str, tuple[float, Any]], key: str, now: float) -> tuple[float, Any] | None:
        with self._lock:
            hit = cache.get(key)
            if hit is None:
                return None
            ttl = self.ttl_s if hit[1] is not None else self.negative_ttl_s
            if now - hit[0] >= ttl:
                return None
            cache.move_to_end(key)
            return hit

    def _put(self, cache: OrderedDict[str, tuple[float, Any]], key: str, now: float, value: Any) -> None:
        with self._lock:
            cache[key] = (now, value)
            cache.move_to_end(key)
            while len(cache) > self.max_entries:
                cache.popitem(last=False)

    def get(self, name: str) -> ClassifierConfig | None:
        now = time.monotonic()
        hit = self._hit(self._configs, name, now)
        if hit is not None:
            return hit[1]
        cfg = self.tenants.get(name)
        self._put(self._configs, name, now, cfg)
        return cfg

    def key_owner(self, key: str) -> str | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._hit(self._owners, digest, now)
        if hit is not None:
            return hit[1]
        owner = self.tenants.key_owner(key)
        self._put(self._owners, digest, now, owner)
        return owner

    def is_fresh(self, name: str, key: str) -> bool:
        """The key's owner and ``name``'s config are both cached and known: resolving needs no I/O."""
        now = time.monotonic()
        owner, cfg = self._owners.get(hash_key(key)), self._configs.get(name)
        return bool(owner and cfg and owner[1] is not None and cfg[1] is not None
                    and now - owner[0] < self.ttl_s and now - cfg[0] < self.ttl_s)

    def invalidate(self, name: str | None = None) -> None:
        with self._lock:
            if name is None:
                self._configs.clear()
                self._owners.clear()
            else:
                # the keys it owned too: a revoked key must not stay valid through the owner cache
                self._configs.pop(name, None)
                for digest in [d for d, (_, owner) in self._owners.items() if owner == name]:
                    del self._owners[digest]
