"""Prometheus metrics of the classify path (module-level: one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("sift_classify_requests_total", "classify requests", ["classifier", "status"])
TEXTS = Counter("sift_classified_texts_total", "texts classified", ["classifier"])
LATENCY = Histogram(
    "sift_classify_latency_seconds",
    "classify request latency",
    ["classifier"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SIZE = Histogram(
    "sift_batch_size", "texts per forward pass", ["classifier"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
INFERENCE = Histogram(
    "sift_inference_seconds", "forward pass time", ["classifier"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
)
MODEL_VERSION = Gauge("sift_model_version", "registry version in service", ["classifier"])
BACKENDS = ("onnx-int8", "onnx", "torch-int8", "torch")
BACKEND = Gauge("sift_model_backend", "what runs the forward pass (1 = in service)", ["classifier", "backend"])
SWAPS = Counter("sift_model_swaps_total", "models swapped in", ["classifier"])
LOW_CONFIDENCE = Counter("sift_low_confidence_total", "predictions routed to review", ["classifier"])
LOAD_FAILURES = Counter("sift_model_load_failures_total", "champion versions this replica failed to load",
                        ["classifier"])
EVICTIONS = Counter("sift_model_evictions_total", "models dropped to stay within SIFT_MODEL_MEMORY_MB", ["classifier"])
