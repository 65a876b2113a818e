"""Serving benchmark: Sift's classify endpoint vs a naive per-request transformers pipeline.

Same model (the shipped MiniLM encoder with an 8-label head), same texts (Reuters R8 newswire,
truncated to 128 tokens), same load from a separate process on loopback. Each server runs alone
(the other is stopped) so they do not share the 2 cores. Sift runs as a user runs it: the full
app with SeaweedFS, MLflow and Kafka (Tansu) up, the model watcher on, and low-confidence routing
live at a realistic share: each variant first classifies every bench text once, and the
classifier's threshold is set (admin API) at the ROUTED_SHARE quantile of those confidences, so
about 10% of texts fall below it and are published to review. The share each phase actually
routed is measured from the answers, and the events on the topic are counted at the end.
Phases, bounded in time:

1. closed loop, 16 concurrent clients, DURATION seconds each: texts/s, p50, p99;
2. open loop at half the baseline's closed-loop throughput (a load the baseline sustains; at 80% its
   latency sometimes runs away, since every request competes for the same cores):
   p50/p99 of both.

    .venv/bin/python bench/classify.py [--duration 20] [--concurrency 16] [--texts 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import machine  # noqa: E402
from bench.pyspy import record_pid, summarize  # noqa: E402
from infra.local.mlflow_server import MlflowServer  # noqa: E402
from infra.local.procs import _die_with_parent as die_with_parent  # noqa: E402
from infra.local.procs import free_port, wait_until  # noqa: E402
from infra.local.seaweed import SeaweedServer, ensure_bucket  # noqa: E402
from infra.local.stack import settings_env  # noqa: E402
from infra.local.tansu import TansuBroker  # noqa: E402
from infra.settings import Settings, default_base_model  # noqa: E402

OPEN_LOOP_SHARE = 0.5
ROUTED_SHARE = 0.10  # share of the bench texts whose confidence falls below the threshold
# Sift's serving variants: name -> (column title, environment)
VARIANTS = {
    "sift_fp32": ("Sift torch fp32 (batching only)", {"SIFT_SERVING_RUNTIME": "torch", "SIFT_QUANTIZE": "none"}),
    "sift_torch_int8": ("Sift torch int8", {"SIFT_SERVING_RUNTIME": "torch", "SIFT_QUANTIZE": "int8"}),
    "sift": ("Sift default (ONNX Runtime int8)", {"SIFT_SERVING_RUNTIME": "onnx", "SIFT_QUANTIZE": "int8"}),
}
LABELS = ["acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade"]


def make_model_dir(out: Path) -> Path:
    """The base encoder with a fresh 8-way head: serving cost is what is measured, not accuracy."""
    from model.format import init_model_dir

    return init_model_dir(out, default_base_model(), LABELS, classifier="bench")


def register_champion(settings: Settings, name: str, model_dir: Path) -> str:
    """Log a model directory to MLflow, register it and make it the classifier's champion."""
    import mlflow

    from infra.registry import Registry, configure_mlflow

    configure_mlflow(settings)
    mlflow.set_experiment("sift-bench")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), "model")
    registry = Registry(settings)
    version = registry.register(name, run.info.run_id).version
    registry.set_champion(name, version)
    return version


def bench_texts(n: int = 500) -> list[str]:
    """Reuters R8 test texts (synthetic newswire-length texts if the corpus cannot be loaded)."""
    try:
        from demo.corpora import load_corpus

        return [r.text for r in load_corpus("reuters-r8", "test")[:n]]
    except Exception as exc:  # noqa: BLE001 - corpus unavailable offline: synthetic newswire-length texts
        print(f"(Reuters R8 unavailable: {exc}; using synthetic texts)")
        words = ("oil prices rose as the company said quarterly net profit shares trade deficit "
                 "bank rates").split()
        return [" ".join(words[(i + j) % len(words)] for j in range(90)) for i in range(n)]


def calibrate(base_url: str, name: str, key: str, admin_key: str, texts: list[str]) -> dict:
    """Classify every text once (nothing routed), then set the threshold at the ROUTED_SHARE
    quantile of the confidences (so that share falls below it) through the admin API, as an
    operator would. Each variant is calibrated on its own confidences (int8 shifts them a little)."""
    confidences: list[float] = []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        r = client.patch(f"/v1/admin/classifiers/{name}", json={"threshold": 0.0001},
                         headers={"x-admin-key": admin_key})
        r.raise_for_status()
        for i in range(0, len(texts), 16):
            r = client.post(f"/v1/classifiers/{name}/classify", json={"texts": texts[i:i + 16]},
                            headers={"x-api-key": key})
            r.raise_for_status()
            confidences += [res["confidence"] for res in r.json()["results"]]
        ranked = sorted(confidences)
        threshold = ranked[int(ROUTED_SHARE * len(ranked))]
        r = client.patch(f"/v1/admin/classifiers/{name}", json={"threshold": threshold},
                         headers={"x-admin-key": admin_key})
        r.raise_for_status()
    below = sum(c < threshold for c in confidences) / len(confidences)
    return {"threshold": threshold, "share_below": below, "min": ranked[0], "max": ranked[-1]}


def count_topic(settings: Settings, short: str) -> int:
    """Records on a topic (all partitions), read to the high watermarks the fetches report."""
    from kafka import KafkaConsumer

    from infra.bus import Bus

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None,
                             auto_offset_reset="earliest", max_poll_records=5000)
    tps = Bus(settings).partitions(consumer, short)
    if not tps:
        consumer.close()
        return 0
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    n = 0
    try:
        for _ in range(600):  # at most ~2 min
            n += sum(len(r) for r in consumer.poll(timeout_ms=200).values())
            if all(consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
                   for tp in tps):
                break
    finally:
        consumer.close()
    return n


def run_load(url: str, key: str, texts_file: Path, *, concurrency: int = 16, rate: float = 0,
             duration: float = 20) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--url", url, "--texts", str(texts_file),
           "--concurrency", str(concurrency), "--duration", str(duration), "--api-key", key]
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def serve(argv: list[str], port: int, env: dict[str, str], log: Path, ready_path: str = "/healthz"
          ) -> subprocess.Popen:
    # preexec: the server dies with this process, so an interrupted benchmark leaves nothing running
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent)
    ok = wait_until(lambda: _get(f"http://127.0.0.1:{port}{ready_path}"), timeout=600)
    if not ok:
        proc.kill()
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
    return proc


def _get(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--texts", type=int, default=500, help="bench texts (Reuters R8 test split)")
    ap.add_argument("--note", default="", help="written into the results file (e.g. what else loaded the machine)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "classify.json")
    ap.add_argument("--variants", default=",".join(["baseline", *VARIANTS]),
                    help="subset to run while investigating (the table needs all three)")
    ap.add_argument("--rate", type=float, default=0, help="open-loop rate when the baseline is not run")
    ap.add_argument("--profile", type=Path, default=None,
                    help="record Sift's closed loop with py-spy into this folder (needs py-spy)")
    args = ap.parse_args()
    variants = set(args.variants.split(","))

    work = Path(tempfile.mkdtemp(prefix="sift-bench-"))
    texts = bench_texts(args.texts)
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))
    model_dir = make_model_dir(work / "model")

    s3 = SeaweedServer(work / "s3", access_key="bench", secret_key="bench-secret-key", log_dir=work,
                       die_with_parent=True).start(timeout=300)
    ensure_bucket(s3.client, "sift-bench")
    ensure_bucket(s3.client, "sift-bench-kafka")
    broker = TansuBroker.on_s3(work / "tansu", bucket="sift-bench-kafka", s3_endpoint=s3.endpoint,
                               s3_access_key="bench", s3_secret_key="bench-secret-key", port=free_port(),
                               die_with_parent=True).start(timeout=300)
    mlf = MlflowServer(work / "mlflow", s3_endpoint=s3.endpoint, s3_access_key="bench",
                       s3_secret_key="bench-secret-key", bucket="sift-bench", log_dir=work,
                       die_with_parent=True).start(timeout=300)
    sift_port, base_port = free_port(), free_port()
    settings = Settings(data_dir=work / "data", s3_endpoint=s3.endpoint, s3_access_key="bench",
                        s3_secret_key="bench-secret-key", bucket="sift-bench",
                        mlflow_tracking_uri=mlf.tracking_uri, kafka_bootstrap=broker.bootstrap)
    env = settings_env(settings)
    results: dict[str, dict] = {}
    try:
        os.environ.update(env)
        from infra.bus import Bus
        from infra.objectstore import ObjectStore
        from infra.tenants import ClassifierConfig, TenantStore

        Bus(settings).ensure_topics()
        store = ObjectStore(settings)
        name = "bench"
        _, key = TenantStore(store).create(ClassifierConfig(name=name, labels=LABELS, threshold=0.0001))
        register_champion(settings, name, model_dir)

        rate = args.rate
        if "baseline" in variants:
            rate = run_baseline(model_dir, base_port, texts_file, work, args, results)
        for variant, (_, overrides) in VARIANTS.items():
            if variant not in variants:
                continue
            sift_url = f"http://127.0.0.1:{sift_port}/v1/classifiers/{name}/classify"
            sift = serve([sys.executable, "-m", "uvicorn", "sift.app:create_app", "--factory", "--host",
                          "127.0.0.1", "--port", str(sift_port), "--no-access-log", "--log-level", "warning"],
                         sift_port, {**env, **overrides}, work / f"{variant}.log",
                         ready_path="/readyz")
            results[f"{variant}_calibration"] = calibrate(f"http://127.0.0.1:{sift_port}", name, key,
                                                          settings.admin_key, texts)
            run_load(sift_url, key, texts_file, concurrency=4, duration=3)
            spy = None
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                spy = record_pid(sift.pid, args.profile / f"{variant}.raw", args.duration)
            results[f"{variant}_closed"] = run_load(sift_url, key, texts_file, concurrency=args.concurrency,
                                                    duration=args.duration)
            if spy:
                spy.wait(60)
                raw = args.profile / f"{variant}.raw"
                if raw.exists():
                    raw.with_suffix(".txt").write_text(summarize(raw, header=(
                        f"# {variant}: py-spy --threads --nonblocking of the API, {args.duration:.0f} s closed loop, "
                        f"{args.concurrency} clients, routing live")))
            if rate:
                results[f"{variant}_open"] = run_load(sift_url, key, texts_file, rate=rate,
                                                      duration=args.duration)
            stop(sift)  # a clean stop: the publisher hands what it holds to the broker first
        results["review_requests_on_topic"] = {"events": count_topic(settings, "review-requests")}
    finally:
        mlf.stop()
        broker.stop()
        s3.stop()
    if variants != {"baseline", *VARIANTS}:
        print(json.dumps(results, indent=2))
        return
    print_table(args, results, rate)


def run_baseline(model_dir: Path, base_port: int, texts_file: Path, work: Path, args: argparse.Namespace,
                 results: dict[str, dict]) -> float:
    """The baseline alone; returns the open-loop rate (half its closed-loop throughput)."""
    base = serve([sys.executable, str(ROOT / "bench" / "baseline_server.py"), "--model", str(model_dir),
                  "--port", str(base_port)], base_port, {}, work / "baseline.log")
    base_url = f"http://127.0.0.1:{base_port}/classify"
    try:
        run_load(base_url, "", texts_file, concurrency=4, duration=3)  # warm-up
        results["baseline_closed"] = run_load(base_url, "", texts_file, concurrency=args.concurrency,
                                              duration=args.duration)
        rate = max(1.0, OPEN_LOOP_SHARE * results["baseline_closed"]["texts_per_s"])
        results["baseline_open"] = run_load(base_url, "", texts_file, rate=rate, duration=args.duration)
    finally:
        stop(base)
    return rate


def print_table(args: argparse.Namespace, results: dict[str, dict], rate: float) -> None:
    rows = [("closed loop", "texts/s", "closed", "texts_per_s", True),
            ("closed loop", "p50 ms", "closed", "p50_ms", False),
            ("closed loop", "p99 ms", "closed", "p99_ms", False),
            (f"open loop {rate:.0f}/s", "p50 ms", "open", "p50_ms", False),
            (f"open loop {rate:.0f}/s", "p99 ms", "open", "p99_ms", False)]
    lines = [
        f"classify benchmark: {args.concurrency} concurrent clients, {args.duration:.0f} s per phase, "
        f"open loop at {rate:.1f} req/s ({OPEN_LOOP_SHARE:.0%} of the baseline's capacity); "
        "ratio = better/worse vs baseline",
        "",
        "| phase | metric | baseline: pipeline per request | "
        + " | ".join(f"{title} | ratio" for title, _ in VARIANTS.values()) + " |",
        "|---|---|---|" + "---|---|" * len(VARIANTS),
    ]
    for phase, metric, kind, field, higher_better in rows:
        b = results[f"baseline_{kind}"][field]
        cells = []
        for variant in VARIANTS:
            v = results[f"{variant}_{kind}"][field]
            ratio = v / b if higher_better else b / v
            cells += [f"{v:.1f}", f"{ratio:.2f}x"]
        lines.append(f"| {phase} | {metric} | {b:.1f} | " + " | ".join(cells) + " |")

    def errors(variant: str) -> int:
        return results[f"{variant}_closed"]["errors"] + results[f"{variant}_open"]["errors"]

    lines.append(f"| all | errors | {errors('baseline')} | " + " | ".join(f"{errors(v)} | " for v in VARIANTS) + "|")

    def routed(variant: str) -> str:
        phases = [results[f"{variant}_{k}"] for k in ("closed", "open")]
        return f"{sum(p['routed'] for p in phases) / max(1, sum(p['requests'] for p in phases)):.1%}"

    lines.append("| all | routed to review | never | " + " | ".join(f"{routed(v)} | " for v in VARIANTS) + "|")
    answered = sum(results[f"{v}_{k}"]["routed"] for v in VARIANTS for k in ("closed", "open"))
    lines += ["", f"thresholds (the {ROUTED_SHARE:.0%} quantile of each variant's confidences on the bench texts): "
              + ", ".join(f"{v} {results[f'{v}_calibration']['threshold']:.4f}" for v in VARIANTS)
              + f"; review requests on the topic after the run: {results['review_requests_on_topic']['events']} "
              f"(answers with review_requested in the measured phases: {answered}, plus warm-ups)"]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "rate": rate, "table": lines, "machine": machine(args.note)},
                                   indent=2))


if __name__ == "__main__":
    main()
