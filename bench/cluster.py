"""Scale-out benchmark on the loopback cluster: classify through HAProxy with 1, 2 and 3 API replicas,
and durable feedback with 2 brokers and then 1, in one run.

The cluster is the one `sift up --api-replicas 3 --brokers 2` runs (LocalStack with a Topology:
SeaweedFS, PostgreSQL under MLflow, two Tansu brokers on one store behind HAProxy), without Label
Studio and without workers, which would only take CPU from what is measured. Each replica count
gets its own HAProxy frontend over the first N replicas, so the same replicas serve every phase;
the baseline of each ratio is the one-replica (one-broker) phase of the same run. CPU seconds per
process are read from /proc for every phase: on a machine with 2 cores, more replicas cannot add
throughput once the cores are busy, and the CPU shares say where the time goes.

    .venv/bin/python bench/cluster.py [--duration 20] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.classify import bench_texts, make_model_dir, run_load  # noqa: E402
from bench.common import machine  # noqa: E402
from bench.feedback import run_feedback_load  # noqa: E402
from infra.local.haproxy import HAProxyServer, haproxy_config  # noqa: E402
from infra.local.postgres import PostgresServer  # noqa: E402
from infra.local.procs import free_port, wait_until  # noqa: E402
from infra.local.stack import LocalStack, Topology  # noqa: E402
from infra.settings import Settings  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children (uvicorn, runuser wrappers)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS


def measure(pids: dict[str, int], run) -> tuple[dict, dict[str, float]]:  # noqa: ANN001
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    # share of one core each process used during the phase
    return result, {name: round((cpu_seconds(pid) - before[name]) / wall, 2) for name, pid in pids.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cluster.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sift-bench-cluster-"))

    def url() -> str:
        return f"http://127.0.0.1:{free_port()}"

    settings = Settings(data_dir=work / "cluster", s3_endpoint=url(), kafka_bootstrap=f"127.0.0.1:{free_port()}",
                        mlflow_tracking_uri=url(), label_studio_url=url(), public_api_url=url(),
                        bucket=f"sift-bench-{uuid.uuid4().hex[:6]}", s3_access_key="bench-key",
                        s3_secret_key="bench-secret-key")
    stack = LocalStack(settings, die_with_parent=True, topology=Topology(api_replicas=3, brokers=2))
    extra: list[HAProxyServer] = []
    results: dict = {"machine": machine("2 brokers and 3 API replicas on one host; no workers, no Label Studio"),
                     "concurrency": args.concurrency, "duration_s": args.duration}
    try:
        print("starting the cluster (S3, PostgreSQL, HAProxy, 2 brokers, MLflow) ...", flush=True)
        stack.start(with_label_studio=False, timeout=400)
        from bench.classify import LABELS, register_champion
        from infra.bus import Bus
        from infra.objectstore import ObjectStore
        from infra.tenants import ClassifierConfig, TenantStore
        from sift.local_up import start_replicas

        Bus(settings).ensure_topics()
        model_dir = make_model_dir(work / "model")
        # the fixed threshold routes nothing: replica scaling, not the review path, is measured here
        _, key = TenantStore(ObjectStore(settings)).create(ClassifierConfig(
            name="bench", labels=LABELS, threshold=0.0001, rate_limit_per_s=100_000, rate_limit_burst=100_000))
        from bench.feedback import LABELS as FEEDBACK_LABELS

        # feedback needs no model: a classifier with the feedback bench's labels
        _, fb_key = TenantStore(ObjectStore(settings)).create(ClassifierConfig(
            name="fb", labels=FEEDBACK_LABELS, rate_limit_per_s=100_000, rate_limit_burst=100_000))
        register_champion(settings, "bench", model_dir)
        ports = stack.topology.api_ports
        start_replicas(stack, settings)  # the replicas of `sift up`, without its workers
        assert wait_until(lambda: all(httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=5).status_code == 200
                                      for p in ports), timeout=600), "replicas not ready"
        texts_file = work / "texts.json"
        texts_file.write_text(json.dumps(bench_texts(300)))
        replica_pids = {f"api-{i}": stack.commands[f"api-{i}"].pid for i in range(len(ports))}

        classify: dict[str, dict] = {}
        for n in (1, 2, 3):
            front = free_port()
            lb = HAProxyServer(work / f"lb-{n}", config=haproxy_config(api_port=front, api_backends=ports[:n],
                                                                         kafka_port=None, kafka_backends=[]),
                               ports=[front], die_with_parent=True).start()
            extra.append(lb)
            time.sleep(3)  # the health checks mark the backends up (rise 2, inter 1 s)
            pids = {**replica_pids, "haproxy": lb.process.pid}
            run_load(f"http://127.0.0.1:{front}/v1/classifiers/bench/classify", key, texts_file,
                     concurrency=args.concurrency, duration=5)  # warm-up
            load, cpu = measure(pids, lambda u=front: run_load(f"http://127.0.0.1:{u}/v1/classifiers/bench/classify",
                                                               key, texts_file, concurrency=args.concurrency,
                                                               duration=args.duration))
            classify[f"{n}_replicas"] = {**load, "cpu_cores_used": cpu}
            print(f"classify, {n} replica(s): {load['texts_per_s']:.1f} texts/s, p99 {load['p99_ms']:.0f} ms, "
                  f"cpu {cpu}", flush=True)
        base = classify["1_replicas"]["texts_per_s"]
        results["classify"] = classify
        results["classify_ratio_vs_1_replica"] = {k: round(v["texts_per_s"] / base, 2) for k, v in classify.items()}

        feedback: dict[str, dict] = {}
        broker_pids = {f"kafka-{i}": stack.services[f"kafka-{i}"].process.pid for i in range(2)}
        fb_url = f"{settings.public_api_url}/v1/classifiers/fb/feedback"
        for brokers in (2, 1):
            if brokers == 1:
                stack.services["kafka-1"].kill()
                time.sleep(5)  # HAProxy marks it down; producers reconnect to the survivor
                run_feedback_load(fb_url, fb_key, args.concurrency, 5)  # warm-up after the failover
            pids = {**replica_pids, **{k: v for k, v in broker_pids.items() if k == "kafka-0" or brokers == 2}}
            load, cpu = measure(pids, lambda: run_feedback_load(fb_url, fb_key, args.concurrency, args.duration))
            feedback[f"{brokers}_brokers"] = {**load, "cpu_cores_used": cpu}
            print(f"feedback, {brokers} broker(s): {load['req_per_s']:.1f} events/s, cpu {cpu}", flush=True)
        results["feedback"] = feedback
        results["feedback_ratio_2_vs_1_broker"] = round(feedback["2_brokers"]["req_per_s"]
                                                        / feedback["1_brokers"]["req_per_s"], 2)
    finally:
        for lb in extra:
            lb.stop()
        stack.stop()
        PostgresServer(stack.data_dir / "postgres").remove_data()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if "ratio" in k}, indent=2))


if __name__ == "__main__":
    main()
