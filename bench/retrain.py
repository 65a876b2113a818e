"""Retrain benchmark: time from "N reviewed labels available" to "new champion serving".

Real SeaweedFS, Tansu and MLflow on loopback; a classify API replica in its own process
(``uvicorn sift.app:create_app``) answering a client that polls it; the retrain worker in this
process. The classifier runs the real retrain defaults (``RetrainPolicy()``: validation with at
least 5 examples per label, the recall gate at 0.05, promotion margin 0, 2 epochs, max_length 128,
900 s budget, two candidates); only ``min_new_labels`` is set to N. The data is chosen to pass
them: R8's four largest topics (earn, acq, crude, trade), balanced, so the fixed evaluation set
holds ~35 texts per label and one text moves a label's recall by ~3 points, under the tolerance.
Setup (not timed): a seed model trained on SEED texts becomes champion. Then N reviewed labels
(other texts) are stored the way the review stage stores them and published on
``reviewed-labels``; the clock starts when the last one is acked. Phases come from the job record;
"swap" is promotion -> the replica's first answer with the new ``model_version``. Baseline in the
same run: the candidates' bare training time, the work any retrain must do — the ratio says what
the pipeline around it costs.

``--profile DIR``: py-spy records, from the clock's start to the new champion's first answer, the
worker's process with its candidate processes (``retrain.raw``: where a candidate's time goes) and
the API replica (``retrain-replica.raw``: the hot swap, a cold load of the new version), each
summarised by ``bench/pyspy.py`` into a ``.txt`` beside it.

    .venv/bin/python bench/retrain.py [--n 500] [--seed-rows 200] [--labels earn,acq,crude,trade] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import machine  # noqa: E402
from infra.local.mlflow_server import MlflowServer  # noqa: E402
from infra.local.procs import free_port, wait_until  # noqa: E402
from infra.local.seaweed import SeaweedServer  # noqa: E402
from infra.local.stack import settings_env  # noqa: E402
from infra.local.tansu import TansuBroker  # noqa: E402
from infra.settings import Settings  # noqa: E402

ACCESS, SECRET = "bench", "bench-secret-key"


def start_services(tmp: Path) -> tuple[Settings, list]:
    s3 = SeaweedServer(tmp / "s3", s3_port=free_port(), access_key=ACCESS, secret_key=SECRET,
                       die_with_parent=True).start()
    s3.create_bucket("sift")
    s3.create_bucket("sift-kafka")
    kafka = TansuBroker.on_s3(tmp / "kafka", bucket="sift-kafka", s3_endpoint=s3.endpoint, s3_access_key=ACCESS,
                              s3_secret_key=SECRET, port=free_port(), die_with_parent=True).start()
    mlflow = MlflowServer(tmp / "mlflow", port=free_port(), s3_endpoint=s3.endpoint, s3_access_key=ACCESS,
                          s3_secret_key=SECRET, bucket="sift", die_with_parent=True).start(timeout=300)
    settings = Settings(data_dir=tmp / "data", s3_endpoint=s3.endpoint, s3_access_key=ACCESS, s3_secret_key=SECRET,
                        bucket="sift", kafka_bootstrap=kafka.bootstrap, mlflow_tracking_uri=mlflow.tracking_uri,
                        model_poll_seconds=600.0, torch_threads=1)
    settings.data_dir.mkdir(parents=True)
    return settings, [mlflow, kafka, s3]


def balanced(rows: list, n: int, labels: list[str], seed: int = 0) -> list:
    """``n`` rows of ``labels`` in turn (label by label, shuffled within each): equal counts per label."""
    import random

    rng = random.Random(seed)
    by_label = {label: [r for r in rows if r.label == label] for label in labels}
    for pool in by_label.values():
        rng.shuffle(pool)
    out: list = []
    while len(out) < n and any(by_label.values()):
        for label in labels:
            if by_label[label] and len(out) < n:
                out.append(by_label[label].pop())
    rng.shuffle(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed-rows", type=int, default=200)
    ap.add_argument("--labels", default="earn,acq,crude,trade")
    ap.add_argument("--note", default="", help="written into the results file (e.g. what else loaded the machine)")
    ap.add_argument("--corpus-cache", type=Path, default=ROOT / ".stack" / "corpora")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrain.json")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy recordings of the timed part into DIR")
    args = ap.parse_args()
    spies: dict[str, subprocess.Popen] = {}

    import logging

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="sift-bench-retrain-"))
    settings, procs = start_services(tmp)
    for k, v in settings_env(settings).items():
        os.environ[k] = v
    from demo.corpora import load_corpus
    from infra.bus import Bus
    from infra.events import TOPIC_REVIEWED_LABELS, ReviewedLabel
    from infra.objectstore import ObjectStore
    from infra.registry import Registry
    from infra.settings import get_settings
    from infra.tenants import ClassifierConfig, RetrainPolicy, TenantStore
    from retrain.assemble import split_for_training
    from retrain.job import list_jobs
    from retrain.seed import store_seed
    from retrain.tracking import train_and_register, train_spec
    from retrain.worker import run_retrain_worker

    get_settings.cache_clear()
    api = None
    stop = threading.Event()
    try:
        corpus = load_corpus("reuters-r8", "train", cache_dir=args.corpus_cache)
        labels = sorted(args.labels.split(","))
        pool = balanced(corpus, args.seed_rows + args.n, labels)
        seed_rows, new_rows = pool[: args.seed_rows], pool[args.seed_rows:]
        policy = RetrainPolicy(min_new_labels=args.n)  # every other field at its default
        store = ObjectStore(settings)
        store.ensure_bucket()
        cfg, key = TenantStore(store).create(ClassifierConfig(name="bench-r8", labels=labels, retrain=policy))
        store_seed(store, cfg.name, seed_rows, source="bench")
        seed_train, seed_eval = split_for_training(cfg.name, seed_rows, policy.eval_share)
        t = time.monotonic()
        seed = train_and_register(cfg, seed_train, registry=Registry(settings), eval_rows=seed_eval,
                                  spec=train_spec(cfg), progress=False, run_name="seed")
        print(f"setup: seed model v{seed.version} on {len(seed_train)} texts in {time.monotonic() - t:.0f}s, "
              f"macro-F1 {seed.metrics.get('macro_f1', float('nan')):.3f}", flush=True)

        port = free_port()
        env = {**os.environ, **settings_env(settings), "SIFT_TORCH_THREADS": "1"}
        api = subprocess.Popen([sys.executable, "-m", "uvicorn", "sift.app:create_app", "--factory", "--host",
                                "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"x-api-key": key}, timeout=30)

        def version() -> str | None:
            try:
                r = client.post("/v1/classifiers/bench-r8/classify", json={"text": "oil prices rose"})
                return r.json()["results"][0]["model_version"] if r.status_code == 200 else None
            except httpx.HTTPError:
                return None

        if not wait_until(lambda: version() == seed.version, timeout=180):
            raise RuntimeError("the API replica did not serve the seed model within 180 s")
        worker = threading.Thread(target=run_retrain_worker, args=(settings, stop),
                                  kwargs={"check_interval_s": 5.0}, daemon=True)
        worker.start()

        # N reviewed labels, stored like the review stage stores them, then published
        t_store = time.monotonic()
        now = datetime.now(UTC)
        events = [ReviewedLabel(classifier=cfg.name, text=r.text, label=r.label, reviewer="bench",
                                source="low_confidence", reviewed_at=now + timedelta(milliseconds=i))
                  for i, r in enumerate(new_rows)]
        for i in range(0, len(events), 50):
            chunk = events[i:i + 50]
            body = "".join(e.model_dump_json() + "\n" for e in chunk).encode()
            store.put_bytes(f"datasets/{cfg.name}/reviewed/{chunk[0].reviewed_at:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex}"
                            ".jsonl", body)
        bus = Bus(settings)
        producer = bus.producer()
        for e in events:
            producer.send(bus.topic(TOPIC_REVIEWED_LABELS), e.to_bytes(), key=e.key())
        producer.flush(timeout=30)
        producer.close()
        if args.profile:
            from bench.pyspy import record_pid

            spies = {"retrain": record_pid(os.getpid(), args.profile / "retrain.raw", 1800, subprocesses=True),
                     "retrain-replica": record_pid(api.pid, args.profile / "retrain-replica.raw", 1800)}
        t0 = time.monotonic()
        t0_wall = datetime.now(UTC)
        print(f"{len(events)} reviewed labels stored + published in {t0 - t_store:.2f}s; clock starts", flush=True)

        failures = 0
        served_at = None
        new_version = None
        deadline = t0 + 1800
        while time.monotonic() < deadline:
            jobs = list_jobs(store, cfg.name)
            if jobs and jobs[0].done:
                job = jobs[0]
                if job.status != "promoted":
                    print(f"job ended {job.status}: {job.reason}")
                    return 1
                new_version = job.selected_version
                break
            time.sleep(0.5)
        assert new_version is not None, "no job finished in time"
        while time.monotonic() < deadline:
            v = version()
            if v is None:
                failures += 1
            if v == new_version:
                served_at = time.monotonic()
                break
            time.sleep(0.05)
        total = served_at - t0
        if spies:
            from bench.pyspy import stop as stop_spy
            from bench.pyspy import summarize

            for name, spy in spies.items():
                stop_spy(spy)
                raw = args.profile / f"{name}.raw"
                (args.profile / f"{name}.txt").write_text(summarize(
                    raw, top=40, header=f"# {raw.name}: py-spy --threads --nonblocking"
                    f"{' --subprocesses' if name == 'retrain' else ''}, labels available -> new champion serving",
                    under="fine_tune" if name == "retrain" else "ServingEngine.load_model"))
        job = list_jobs(store, cfg.name)[0]
        trigger_s = (job.started_at - t0_wall).total_seconds()
        promote_end = job.phases[-1].started_at + timedelta(seconds=job.phases[-1].seconds)
        swap_s = total - (promote_end - t0_wall).total_seconds()
        rows = [("trigger (labels counted -> job start)", trigger_s)]
        rows += [(p.name, p.seconds) for p in job.phases]
        rows.append(("swap (promoted -> replica answers new version)", swap_s))
        train_s = sum(p.seconds for p in job.phases if p.name == "train" or p.name.startswith("train:"))
        print()
        print(f"N={args.n} reviewed labels, seed {args.seed_rows}, labels {labels}, retrain defaults "
              f"(max_length {policy.max_length}, {policy.epochs} epochs, recall tolerance {policy.recall_tolerance}, "
              f"min {policy.min_examples_per_label} per label), {os.cpu_count()} cores")
        print(f"{'phase':<50}{'seconds':>10}{'share':>8}")
        for name, s in rows:
            print(f"{name:<50}{s:>10.2f}{s / total:>8.1%}")
        print(f"{'TOTAL labels available -> new champion serving':<50}{total:>10.2f}")
        print(f"baseline: bare candidate training {train_s:.2f}s; pipeline/baseline = {total / train_s:.2f}x")
        cands = {c.name: (c.version, round(c.macro_f1 or 0, 4)) for c in job.candidates}
        print(f"candidates {cands}; champion before v{job.champion_before} macro-F1 {job.champion_macro_f1:.4f}; "
              f"selected v{new_version}; failed classify requests while polling: {failures}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "n": args.n, "seed_rows": args.seed_rows, "labels": labels, "policy": policy.model_dump(),
            "total_s": total, "phases": dict(rows), "bare_training_s": train_s,
            "candidates": cands, "champion_macro_f1": job.champion_macro_f1, "dataset": job.dataset.model_dump(
                mode="json") if job.dataset else None, "verdict": job.verdict.model_dump(mode="json") if job.verdict
            else None, "validation_ok": job.validation.ok if job.validation else None, "machine": machine(args.note),
        }, indent=2, default=str))
        return 0
    finally:
        stop.set()
        if api is not None:
            api.terminate()
            api.wait(timeout=20)
        for p in procs:
            p.stop()


if __name__ == "__main__":
    raise SystemExit(main())
