"""Feedback benchmark: events/s from the API to the Kafka topic, against a baseline with the same
durability, and what low-confidence routing adds to classify latency. Real SeaweedFS + Tansu (S3
storage) on loopback; load from a separate process; every phase bounded in time.

The baseline (``bench/feedback_baseline.py``) is the plain HTTP way to do the same job: an endpoint
that produces each event with acks=all (the same producer configuration) and answers only after the
broker's ack, the promise Sift's 202 makes. Both run as their own process under the same load.

1. like/dislike: closed loop of N clients (each N of --concurrency, default 16 and 64) POSTing
   feedback for DURATION s to the baseline, to Sift's per-request path as it was before group
   commit (``bench/feedback_per_request.py``: each request's own ``publish_durable`` in a worker
   thread) and to Sift's feedback API (group commit); events/s = accepted / load time (a 202 comes
   after the broker's ack or the spool's commit), 0 unless every accepted event is found on the
   topic; p50/p99; for group commit, events per group (the publisher's stats).
2. batch: one CSV of BATCH_ROWS rows to the baseline and to Sift; rows/s until the last event is on
   the topic.
3. the publisher alone, without HTTP: N threads publishing durable events per request
   (``publish_durable``) vs group commit (``submit_durable``), DURATION/3 s each, twice alternated;
   on a machine where HTTP is the bottleneck this is what group commit changes.
4. classify p50/p99 with routing on (threshold 1.0: every result published) vs off (threshold
   ~0: none), same server and model, same load (skipped with --skip-classify).
A bare in-process producer's rate is printed as the broker's ceiling (no HTTP), not as a baseline.

The bench classifier's rate limit is raised (100,000/s) so that the per-key limit (200/s by
default) does not cap what is measured.

    .venv/bin/python bench/feedback.py [--duration 15] [--concurrency 16 64] [--batch-rows 100000] [--skip-classify]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.pyspy import record_pid, summarize, wrap  # noqa: E402
from infra.local.procs import _die_with_parent as die_with_parent  # noqa: E402
from infra.local.procs import free_port, wait_until  # noqa: E402
from infra.local.seaweed import SeaweedServer, ensure_bucket  # noqa: E402
from infra.local.stack import settings_env  # noqa: E402
from infra.local.tansu import TansuBroker  # noqa: E402
from infra.settings import Settings  # noqa: E402

LABELS = ["sports", "tech", "politics"]


# ---- load process --------------------------------------------------------------------------------

async def _feedback_load(url: str, key: str, concurrency: int, duration: float, max_requests: int) -> dict:
    """``concurrency`` clients on keep-alive connections, each sending its next request on an answer.

    aiohttp rather than httpx: profiled at 64 clients, httpx's pool bookkeeping (``is_idle`` scans of
    every connection per request) kept the load process on a full core while the server used half of
    one, so the load generator, not the server, set the rate (``--profile``).
    """
    import aiohttp

    lat: list[float] = []
    errors = sent = 0
    deadline = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30),
                                     headers={"x-api-key": key}) as client:
        async def worker(seed: int) -> None:
            nonlocal errors, sent
            rng = random.Random(seed)
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                body = {"text": f"feedback text {rng.random()}", "label": rng.choice(LABELS),
                        "verdict": rng.choice(["like", "dislike"])}
                t0 = time.perf_counter()
                try:
                    async with client.post(url, json=body) as response:
                        await response.read()
                        ok = response.status == 202
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()

    def pct(q: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    return {"accepted": len(lat), "errors": errors, "wall_s": wall, "req_per_s": len(lat) / wall,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


# ---- helpers -------------------------------------------------------------------------------------

def count_until(settings: Settings, short: str, expect: int, timeout_s: float) -> tuple[int, float]:
    """Events on the topic and the monotonic time the last expected one was seen."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             group_id=None, auto_offset_reset="earliest", max_poll_records=5000)
    tps = [TopicPartition(settings.topic_prefix + short, p)
           for p in sorted(consumer.partitions_for_topic(settings.topic_prefix + short) or {0})]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    n, last, deadline = 0, time.monotonic(), time.monotonic() + timeout_s
    try:
        while n < expect and time.monotonic() < deadline:
            got = sum(len(r) for r in consumer.poll(timeout_ms=200).values())
            if got:
                n, last = n + got, time.monotonic()
    finally:
        consumer.close()
    return n, last


def bare_producer_rate(settings: Settings, n: int) -> float:
    """Baseline: the same events from a bare producer in-process (acks=all, batched)."""
    from infra.bus import Bus
    from infra.events import ReviewRequest

    bus = Bus(settings.model_copy(update={"topic_prefix": settings.topic_prefix + "bare."}))
    bus.ensure_topics()
    producer = bus.producer()
    events = [ReviewRequest(classifier="bench", text=f"feedback text {i}", predicted_label="tech",
                            source="user_feedback", verdict="like").to_bytes() for i in range(n)]
    t0 = time.perf_counter()
    for value in events:
        producer.send(bus.topic("review-requests"), value, key=b"bench")
    producer.flush(120)
    rate = n / (time.perf_counter() - t0)
    producer.close()
    return rate


def publisher_rates(settings: Settings, concurrency: list[int], duration: float) -> dict:
    """The publisher alone, no HTTP: N threads each publishing one durable event after another,
    per request (``publish_durable``, the path before group commit) vs group commit
    (``submit_durable(...).result()``), alternated twice so drift cancels. Where HTTP is the
    bottleneck (a loaded machine), this is what group commit changes."""
    import threading

    from infra.events import ReviewRequest
    from infra.publisher import EventPublisher

    pub = EventPublisher(settings.model_copy(update={"topic_prefix": settings.topic_prefix + "pub."}))
    if not wait_until(lambda: pub.stats().broker_up, 60):  # until then every event would go to the spool
        raise RuntimeError("the publisher did not connect to the broker")
    ev = ReviewRequest(classifier="bench", text="warm-up", predicted_label="tech", source="user_feedback",
                       verdict="like")
    pub.publish_durable("review-requests", ev)
    out: dict = {}
    try:
        for _ in range(2):
            for mode in ("per_request", "group_commit"):
                for clients in concurrency:
                    lat: list[float] = []
                    deadline = time.monotonic() + duration
                    groups0 = pub.stats().groups

                    def worker(w: int, mode: str = mode, lat: list[float] = lat, deadline: float = deadline) -> None:
                        i = 0
                        while time.monotonic() < deadline:
                            e = ReviewRequest(classifier="bench", text=f"client {w} says {i}", predicted_label="tech",
                                              source="user_feedback", verdict="like")
                            t0 = time.perf_counter()
                            if mode == "per_request":
                                pub.publish_durable("review-requests", e)
                            else:
                                pub.submit_durable("review-requests", e).result()
                            lat.append(time.perf_counter() - t0)
                            i += 1

                    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
                    t0 = time.perf_counter()
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    wall = time.perf_counter() - t0
                    lat.sort()
                    run = {"events": len(lat), "events_per_s": len(lat) / wall,
                           "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
                           "groups": pub.stats().groups - groups0}
                    out.setdefault(mode, {}).setdefault(str(clients), []).append(run)
        out["spooled"] = pub.stats().spooled
    finally:
        pub.close()
    return out


def serve(argv: list[str], port: int, env: dict[str, str], log: Path, ready: str = "/healthz") -> subprocess.Popen:
    # preexec: the server dies with this process, so an interrupted benchmark leaves nothing running
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            preexec_fn=die_with_parent)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(up, 600):
        proc.kill()
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_feedback_load(url: str, key: str, concurrency: int, duration: float, profile: Path | None = None) -> dict:
    """One load process; ``profile``: record it with py-spy into that raw file."""
    cmd = [sys.executable, __file__, "--load", url, "--api-key", key, "--concurrency", str(concurrency),
           "--duration", str(duration)]
    if profile is not None:
        cmd = wrap(cmd, profile)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, check=True, cwd=ROOT)
    # the figures are the last JSON line (py-spy, when it wraps the load, prints after it)
    return json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith("{")))


# ---- phases --------------------------------------------------------------------------------------

def http_phases(label: str, argv: list[str], settings: Settings, work: Path, args: argparse.Namespace,
                key: str, port: int, *, batch: bool) -> dict:
    """Single feedback under load at each concurrency, then (``batch``) one batch upload, against
    one server; counted on its topic."""
    from feedback.cli import upload_via_api

    server = serve(argv, port, settings_env(settings), work / f"{label}.log")
    out: dict = {"single": {}}
    on_topic = 0
    try:
        base = f"http://127.0.0.1:{port}/v1/classifiers/bench-fb"
        for clients in args.concurrency:
            spy = profile = None
            if args.profile and label == "sift" and clients == max(args.concurrency):
                # what limits the HTTP path: the server and the load generator, both recorded
                spy = record_pid(server.pid, args.profile / f"feedback-server-{clients}.raw", args.duration)
                profile = args.profile / f"feedback-loadgen-{clients}.raw"
            load = run_feedback_load(base + "/feedback", key, clients, args.duration, profile)
            if spy is not None:
                spy.wait(60)
            n, _ = count_until(settings, "review-requests", on_topic + load["accepted"], 120)
            # each 202 means the event is on the topic or in the spool (acked or committed before
            # answering), so the rate is accepted / load time; the topic count checks that every
            # accepted one got there
            run = {**load, "on_topic": n - on_topic,
                   "events_per_s": load["req_per_s"] if n - on_topic >= load["accepted"] else 0.0}
            on_topic = n
            stats = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json().get("publisher")
            if stats:  # Sift: how many events shared a group commit (cumulative over the loads so far)
                run["publisher"] = stats
            out["single"][str(clients)] = run
        if batch:
            rows = args.batch_rows
            path = work / "batch.csv"
            if not path.exists():
                with open(path, "w") as f:
                    f.write("text,label\n")
                    for i in range(rows):
                        f.write(f"batch row {i} about the match and the new chip,{LABELS[i % 3]}\n")
            t0 = time.monotonic()
            status, report = upload_via_api(f"http://127.0.0.1:{port}", key, "bench-fb", path, progress=False)
            assert status == 202, report
            response_s = time.monotonic() - t0
            n, last = count_until(settings, "review-requests", on_topic + rows, 300)
            out["batch"] = {"rows": rows, "response_s": response_s, "on_topic": n - on_topic,
                            "rows_per_s": rows / (last - t0)}
    finally:
        stop(server)
    return out


def feedback_phases(settings: Settings, work: Path, args: argparse.Namespace) -> dict:
    from infra.objectstore import ObjectStore
    from infra.tenants import ClassifierConfig, TenantStore

    _, key = TenantStore(ObjectStore(settings)).create(ClassifierConfig(
        name="bench-fb", labels=LABELS, rate_limit_per_s=100_000, rate_limit_burst=100_000))
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"]
    out: dict = {}
    variants = [
        ("baseline", [sys.executable, str(ROOT / "bench" / "feedback_baseline.py"), "--port"], True),
        ("per_request", [*uvicorn, "--factory", "bench.feedback_per_request:create_app", "--port"], False),
        ("sift", [*uvicorn, "--factory", "sift.feedback_app:create_feedback_app", "--port"], True),
    ]
    for label, argv, batch in variants:
        port = free_port()
        variant = settings.model_copy(update={"topic_prefix": f"bench-{label}."})
        out[label] = http_phases(label, [*argv, str(port)], variant, work, args, key, port, batch=batch)
    out["bare_producer_events_per_s"] = bare_producer_rate(settings, 20_000)
    out["publisher"] = publisher_rates(settings, args.concurrency, args.duration / 3)
    return out


def classify_phases(settings: Settings, work: Path, s3: SeaweedServer, args: argparse.Namespace) -> dict:
    """Same server, same model: classifier `bench-off` (threshold ~0, nothing routed) vs `bench-on`
    (threshold 1.0, every result published)."""
    from bench.classify import bench_texts, make_model_dir, run_load
    from infra.local.mlflow_server import MlflowServer

    mlf = MlflowServer(work / "mlflow", s3_endpoint=s3.endpoint, s3_access_key=settings.s3_access_key,
                       s3_secret_key=settings.s3_secret_key, bucket=settings.bucket, log_dir=work,
                       die_with_parent=True).start(timeout=300)
    settings = settings.model_copy(update={"mlflow_tracking_uri": mlf.tracking_uri})
    env = settings_env(settings)
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(bench_texts()))
    out: dict = {}
    try:
        os.environ.update(env)
        import mlflow

        from bench.classify import LABELS as CLASSIFY_LABELS
        from infra.objectstore import ObjectStore
        from infra.registry import Registry, configure_mlflow
        from infra.tenants import ClassifierConfig, TenantStore

        model_dir = make_model_dir(work / "model")
        tenants = TenantStore(ObjectStore(settings))
        keys = {}
        configure_mlflow(settings)
        mlflow.set_experiment("sift-bench-feedback")
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(model_dir), "model")
        reg = Registry(settings)
        for name, threshold in (("bench-off", 0.0001), ("bench-on", 1.0)):
            _, keys[name] = tenants.create(ClassifierConfig(name=name, labels=CLASSIFY_LABELS, threshold=threshold))
            reg.set_champion(name, reg.register(name, run.info.run_id).version)
        port = free_port()
        server = serve([sys.executable, "-m", "uvicorn", "sift.app:create_app", "--factory", "--host", "127.0.0.1",
                        "--port", str(port), "--no-access-log", "--log-level", "warning"], port, env,
                       work / "sift.log", ready="/readyz")
        try:
            for name in ("bench-off", "bench-on"):  # warm both
                run_load(f"http://127.0.0.1:{port}/v1/classifiers/{name}/classify", keys[name], texts_file,
                         concurrency=4, duration=3)
            for name in ("bench-off", "bench-on", "bench-off", "bench-on"):  # interleaved: drift cancels
                r = run_load(f"http://127.0.0.1:{port}/v1/classifiers/{name}/classify", keys[name], texts_file,
                             concurrency=args.concurrency[0], duration=args.duration / 2)
                out.setdefault(name, []).append(r)
        finally:
            stop(server)
        routed, _ = count_until(settings, "review-requests", 1, 10)
        out["routed_events_seen"] = routed > 0
    finally:
        mlf.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--skip-classify", action="store_true")
    ap.add_argument("--note", default="", help="written into the results file (e.g. what else loaded the machine)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "feedback.json")
    ap.add_argument("--profile", type=Path, default=None,
                    help="record Sift's server and the load generator with py-spy (at the highest concurrency) "
                         "into this folder, with summaries")
    ap.add_argument("--load", help=argparse.SUPPRESS)  # internal: run as the load process
    ap.add_argument("--api-key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        print(json.dumps(asyncio.run(_feedback_load(args.load, args.api_key, args.concurrency[0], args.duration,
                                                    max_requests=1_000_000))))
        return

    work = Path(tempfile.mkdtemp(prefix="sift-bench-fb-"))
    s3 = SeaweedServer(work / "s3", access_key="bench", secret_key="bench-secret-key", log_dir=work,
                       die_with_parent=True).start(timeout=300)
    ensure_bucket(s3.client, "sift-bench")
    ensure_bucket(s3.client, "sift-bench-kafka")
    broker = TansuBroker.on_s3(work / "tansu", bucket="sift-bench-kafka", s3_endpoint=s3.endpoint,
                               s3_access_key="bench", s3_secret_key="bench-secret-key",
                               die_with_parent=True).start(timeout=300)
    settings = Settings(data_dir=work / "data", s3_endpoint=s3.endpoint, s3_access_key="bench",
                        s3_secret_key="bench-secret-key", bucket="sift-bench", kafka_bootstrap=broker.bootstrap,
                        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    try:
        fb = feedback_phases(settings, work, args)
        cl = None if args.skip_classify else classify_phases(settings, work, s3, args)
    finally:
        broker.stop()
        s3.stop()

    print(json.dumps(fb, indent=2, default=str), flush=True)  # raw figures first: a failed phase shows here
    if args.profile:
        for raw in sorted(args.profile.glob("feedback-*.raw")):
            if raw.exists() and raw.stat().st_size:
                header = f"# {raw.name}: py-spy --threads --nonblocking, {args.duration:.0f} s of Sift's group commit"
                raw.with_suffix(".txt").write_text(summarize(raw, header=header))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from bench.common import machine

    args.out.write_text(json.dumps({"feedback": fb, "classify": cl, "machine": machine(args.note)}, indent=2,
                                   default=str))
    b, pr, f, bare = fb["baseline"], fb["per_request"], fb["sift"], fb["bare_producer_events_per_s"]

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if y else "n/a"
    lines = [
        f"feedback benchmark: {', '.join(map(str, args.concurrency))} clients, {args.duration:.0f} s each, batch "
        f"{args.batch_rows:,} rows, Tansu on SeaweedFS, loopback; baseline = HTTP endpoint producing each event "
        "with acks=all before answering; per-request = Sift before group commit (publish_durable per request "
        "in a worker thread); group commit = Sift now",
        "",
        "| POST /feedback → topic | clients | baseline | per-request | group commit | group/per-request |",
        "|---|---|---|---|---|---|",
    ]
    for c in map(str, args.concurrency):
        bs, ps, fs = b["single"][c], pr["single"][c], f["single"][c]
        lines += [
            f"| events/s | {c} | {bs['events_per_s']:,.0f} | {ps['events_per_s']:,.0f} | {fs['events_per_s']:,.0f} | "
            f"{ratio(fs['events_per_s'], ps['events_per_s'])} |",
            f"| p50 ms | {c} | {bs['p50_ms']:.1f} | {ps['p50_ms']:.1f} | {fs['p50_ms']:.1f} | "
            f"{ratio(ps['p50_ms'], fs['p50_ms'])} |",
            f"| p99 ms | {c} | {bs['p99_ms']:.1f} | {ps['p99_ms']:.1f} | {fs['p99_ms']:.1f} | "
            f"{ratio(ps['p99_ms'], fs['p99_ms'])} |",
            f"| errors | {c} | {bs['errors']} | {ps['errors']} | {fs['errors']} | |",
        ]
    last = f["single"][str(args.concurrency[-1])].get("publisher") or {}
    if last.get("groups"):
        lines += ["", f"group commit: {last['sent']:,} events acked in {last['groups']:,} groups "
                      f"({last['sent'] / last['groups']:.1f} events per group over all loads); spooled "
                      f"{last['spooled']}"]
    pubr = fb["publisher"]

    def mean(runs: list[dict], key: str) -> float:
        return sum(r[key] for r in runs) / len(runs)
    lines += ["", f"publisher alone (no HTTP; threads, {args.duration / 3:.0f} s x 2 alternated runs each; "
                  f"{pubr['spooled']} spooled)", "",
              "| publisher | clients | per-request | group commit | group/per-request |", "|---|---|---|---|---|"]
    for c in map(str, args.concurrency):
        pq, gq = pubr["per_request"][c], pubr["group_commit"][c]
        lines += [
            f"| events/s | {c} | {mean(pq, 'events_per_s'):,.0f} | {mean(gq, 'events_per_s'):,.0f} | "
            f"{ratio(mean(gq, 'events_per_s'), mean(pq, 'events_per_s'))} |",
            f"| p50 ms | {c} | {mean(pq, 'p50_ms'):.1f} | {mean(gq, 'p50_ms'):.1f} | "
            f"{ratio(mean(pq, 'p50_ms'), mean(gq, 'p50_ms'))} |",
            f"| p99 ms | {c} | {mean(pq, 'p99_ms'):.1f} | {mean(gq, 'p99_ms'):.1f} | "
            f"{ratio(mean(pq, 'p99_ms'), mean(gq, 'p99_ms'))} |",
            f"| events per group | {c} | 1 | {sum(r['events'] for r in gq) / max(1, sum(r['groups'] for r in gq)):.1f}"
            " | |",
        ]
    lines += [
        "",
        "| POST /feedback/batch | baseline | Sift | Sift/baseline |",
        "|---|---|---|---|",
        f"| rows/s → topic | {b['batch']['rows_per_s']:,.0f} | {f['batch']['rows_per_s']:,.0f} | "
        f"{ratio(f['batch']['rows_per_s'], b['batch']['rows_per_s'])} |",
        f"| response s | {b['batch']['response_s']:.1f} | {f['batch']['response_s']:.1f} | |",
        f"| rows on topic | {b['batch']['on_topic']:,} | {f['batch']['on_topic']:,} | |",
        "",
        f"broker ceiling, for reference (bare in-process producer, acks=all, no HTTP): {bare:,.0f} events/s",
    ]
    if cl:
        def agg(runs: list[dict], key: str) -> float:
            return sum(r[key] for r in runs) / len(runs)

        off, on = cl["bench-off"], cl["bench-on"]
        lines += [
            "",
            "| classify | routing off | routing on (every result published) | on/off | added |",
            "|---|---|---|---|---|",
        ]
        for key in ("p50_ms", "p99_ms"):
            a, b = agg(off, key), agg(on, key)
            lines.append(f"| {key.replace('_ms', '')} ms | {a:.1f} | {b:.1f} | {b / a:.2f}x | {b - a:+.1f} ms |")
        a, b = agg(off, "texts_per_s"), agg(on, "texts_per_s")
        lines.append(f"| texts/s | {a:.1f} | {b:.1f} | {b / a:.2f}x | |")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from bench.common import machine

    args.out.write_text(json.dumps({"feedback": fb, "classify": cl, "table": lines, "machine": machine(args.note)},
                                   indent=2, default=str))


if __name__ == "__main__":
    main()
