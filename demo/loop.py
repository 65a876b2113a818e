"""Part B of ``sift demo``: one pass of the whole loop through the running product, nothing mocked.

The local stack (SeaweedFS S3, Tansu Kafka, MLflow, Label Studio) runs from a demo data folder on
its own loopback ports; the API (``sift.app:create_app`` under uvicorn) and the review, reconcile
and retrain workers run as the same processes ``sift up`` starts. This module only drives them
from outside, the way an app and a human would:

1. onboard a demo classifier, train and register its seed model (the ``sift train`` path, with
   the seed stored in S3 so every retrain rebuilds on it);
2. per round, stream a slice of unseen pool texts to ``POST /classify``; the API routes the
   low-confidence ones to Kafka, the review worker turns them into Label Studio tasks (window of
   open tasks refilled by smallest top-2 margin first);
3. a simulated reviewer answers those tasks with the corpus' true label through the Label Studio
   API (``annotations.create``), exactly like a person clicking Submit;
4. the collector (webhook in the API, reconciliation worker as a safety net) writes reviewed
   labels; the retrain worker counts them, runs a job when the policy's ``min_new_labels`` is
   reached (assemble, validate, warm + fresh candidates, bless, promote, model-event);
5. the API swaps models (checked by what ``/classify`` answers), and the served version is scored on
   the held-out test set with the product's ``evaluate`` (see ``score_version`` for why not via the API).

It imports only ``infra``, ``model`` and ``retrain`` (the seed model, scoring, job records); it
talks to the classifier, review and collector through HTTP, Kafka and Label Studio.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from infra.settings import Settings
from retrain.dataio import LabeledText

log = logging.getLogger(__name__)

Say = Callable[[str], None]


class LoopConfig(BaseModel):
    data_dir: Path = Path(".stack/demo")
    port_base: int = Field(default=26000, description="S3 +333, Kafka +92, MLflow +500, Label Studio +80, API +800")
    classifier: str = ""  # default: demo-<time>, so a reused data folder never mixes runs
    corpus: str = "reuters-r8"
    seed: int = 0
    seed_labels: int = 200
    min_per_label: int = 8
    rounds: int = 2
    labels_per_round: int = 50
    traffic_per_round: int = 500
    threshold: float = 0.9
    review_window: int = 25
    test_size: int = 1000
    pool_size: int = 2000
    num_hidden_layers: int = 2
    max_length: int = 64
    seed_epochs: float = 8
    epochs: int = 4
    learning_rate: float = 5e-4
    job_time_budget_s: float = 240.0
    keep_stack: bool = False
    round_timeout_s: float = 900.0


class VersionResult(BaseModel):
    round: int
    version: str
    accuracy: float
    macro_f1: float
    labels_used: int = Field(description="seed labels + reviewed labels the model's training set held")
    reviewed_labels: int
    job_status: str = ""
    job_reason: str = ""
    served_after_s: float | None = Field(default=None, description="job done -> API answers with it")


class RoundLog(BaseModel):
    round: int
    streamed: int
    routed_to_review: int
    answered: int
    answered_by_margin: list[float] = Field(default_factory=list, description="top-2 margin of each answered task")
    reviewer_seconds: float
    job_seconds: float | None = None


class LoopResult(BaseModel):
    config: LoopConfig
    classifier: str
    versions: list[VersionResult]
    rounds: list[RoundLog]
    seconds: float
    stack_start_seconds: float


def demo_settings(cfg: LoopConfig) -> Settings:
    """Settings of the demo stack: its own data folder, bucket and loopback ports."""
    b = cfg.port_base
    return Settings(
        data_dir=cfg.data_dir, s3_endpoint=f"http://127.0.0.1:{b + 333}", kafka_bootstrap=f"127.0.0.1:{b + 92}",
        mlflow_tracking_uri=f"http://127.0.0.1:{b + 500}", label_studio_url=f"http://127.0.0.1:{b + 80}",
        public_api_url=f"http://127.0.0.1:{b + 800}", bucket="sift-demo", model_poll_seconds=10.0,
        admin_key="sift-demo-admin-key",
    )


def seed_sample(rows: list[LabeledText], n: int, min_per_label: int, seed: int) -> list[LabeledText]:
    """``n`` random rows with at least ``min_per_label`` of every label.

    Why the floor: data validation rejects a label with too few training examples, and a seed
    model that never saw a label cannot route it; real onboarding data has every label too.
    """
    import random

    rng = random.Random(seed)
    shuffled = rows[:]
    rng.shuffle(shuffled)
    out: list[LabeledText] = []
    per: dict[str, int] = {}
    for r in shuffled:
        if per.get(r.label, 0) < min_per_label:
            out.append(r)
            per[r.label] = per.get(r.label, 0) + 1
    taken = {r.text for r in out}
    out += [r for r in shuffled if r.text not in taken][: max(0, n - len(out))]
    return out


# ---- the simulated reviewer ---------------------------------------------------------------------

class SimulatedReviewer:
    """Answers open tasks of a Label Studio project with the corpus' true label, via the public API.

    It reads the control names from the project's own label config (as any Label Studio client
    would), so it knows nothing of Sift's internals beyond "the task data has a ``text``".
    """

    def __init__(self, settings: Settings, project_id: int, truth: dict[str, str]) -> None:
        from label_studio_sdk import LabelStudio

        self.client = LabelStudio(base_url=settings.label_studio_url, api_key=settings.label_studio_token)
        self.project_id = project_id
        self.truth = {" ".join(t.split()): label for t, label in truth.items()}
        parsed = self.client.projects.get(project_id).parsed_label_config or {}
        self.from_name, spec = next((k, v) for k, v in parsed.items() if v.get("type") == "Choices")
        self.to_name = spec["to_name"][0]

    def open_tasks(self) -> list[dict[str, Any]]:
        tasks = []
        for t in self.client.tasks.list(project=self.project_id, fields="all", page_size=100):
            d = t.model_dump() if hasattr(t, "model_dump") else dict(t)
            if not (d.get("total_annotations") or 0) and not (d.get("cancelled_annotations") or 0):
                tasks.append(d)
        return tasks

    def answer(self, task: dict[str, Any]) -> str | None:
        text = (task.get("data") or {}).get("text", "")
        label = self.truth.get(" ".join(str(text).split()))
        if label is None:  # not a corpus text: skip it, as a person would, so it leaves the window
            self.client.annotations.create(id=int(task["id"]), result=[], was_cancelled=True)
            return None
        self.client.annotations.create(id=int(task["id"]), result=[{
            "from_name": self.from_name, "to_name": self.to_name, "type": "choices",
            "value": {"choices": [label]}}])
        return label

    def review(self, n: int, timeout_s: float, stop_early: Callable[[], bool] = lambda: False) -> list[float]:
        """Answer ``n`` tasks as they appear (the worker refills the window every few seconds).

        Oldest task first, as Label Studio Community shows them. Returns each answered task's
        top-2 margin (from the task data the worker wrote), to show what reached the reviewer.
        """
        deadline = time.monotonic() + timeout_s
        margins: list[float] = []
        while len(margins) < n and time.monotonic() < deadline and not stop_early():
            tasks = sorted(self.open_tasks(), key=lambda t: int(t["id"]))
            if not tasks:
                time.sleep(1.0)
                continue
            for task in tasks[: n - len(margins)]:
                if self.answer(task) is not None:
                    prio = (task.get("data") or {}).get("priority")
                    # the queue stores priority = (2 - tier) + (1 - margin); tier 2 is "the model was unsure"
                    margins.append(round(1 - float(prio), 4) if isinstance(prio, int | float) and prio <= 1
                                   else float("nan"))
        return margins


# ---- driving the API ------------------------------------------------------------------------------

class ApiClient:
    def __init__(self, base_url: str, classifier: str, api_key: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=60.0, headers={"x-api-key": api_key})
        self.classifier = classifier

    def classify(self, texts: list[str], batch: int = 32) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(0, len(texts), batch):
            for attempt in range(30):
                resp = self.http.post(f"/v1/classifiers/{self.classifier}/classify", json={"texts": texts[i:i + batch]})
                if resp.status_code != 503:
                    break
                time.sleep(1.0 + attempt * 0.2)  # model still loading
            resp.raise_for_status()
            out += resp.json()["results"]
        return out

    def served_version(self, probe: str) -> str:
        """The version the API answers with. ``probe`` is a seed text: if it is routed to review,
        the reviewer knows its label, so the probe never leaves junk in the review queue."""
        return str(self.classify([probe])[0]["model_version"])

    def close(self) -> None:
        self.http.close()


def score_version(settings: Settings, classifier: str, version: str, test: list[LabeledText],
                  cache: Path) -> tuple[float, float]:
    """(accuracy, macro-F1) of a registered version on the held-out test set.

    Scored in-process with the product's ``evaluate`` on the registry's artifact, not through
    ``/classify``: classifying the test set through the API would route its doubtful texts into
    the review queue, and a reviewer answering them would leak test labels into training.
    """
    from infra.registry import Registry
    from model.evaluate import evaluate
    from model.runtime import LoadedModel

    registry = Registry(settings)
    ref = registry.ref(classifier, version)
    report = evaluate(LoadedModel.load(registry.download(ref, cache_dir=cache)), test)
    return report.accuracy, report.macro_f1


def _wait(check: Callable[[], Any], timeout_s: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# ---- the pass ---------------------------------------------------------------------------------------

def run_loop(cfg: LoopConfig, pool: list[LabeledText], test: list[LabeledText], say: Say = print) -> LoopResult:
    """Start (or reuse) the demo stack and run ``cfg.rounds`` rounds of the loop; see the module doc."""
    from infra.bus import Bus
    from infra.local.stack import LocalStack
    from infra.objectstore import ObjectStore
    from infra.registry import Registry
    from infra.tenants import ClassifierConfig, RetrainPolicy, TenantStore
    from retrain.assemble import read_reviewed, split_for_training
    from retrain.job import list_jobs
    from retrain.seed import store_seed
    from retrain.tracking import train_and_register, train_spec

    started = time.monotonic()
    settings = demo_settings(cfg)
    name = cfg.classifier or f"demo-{datetime.now(UTC):%m%d-%H%M%S}"
    labels = sorted({r.label for r in [*pool, *test]})
    truth = {r.text: r.label for r in pool}
    stack = LocalStack(settings, die_with_parent=not cfg.keep_stack)
    say(f"[loop] starting the local stack in {Path(cfg.data_dir).resolve()} (Label Studio's first start takes ~2 min)")
    stack.start(with_label_studio=True)
    stack_s = time.monotonic() - started
    api: ApiClient | None = None
    try:
        Bus(settings).ensure_topics()
        store = ObjectStore(settings)
        store.ensure_bucket()
        tenants = TenantStore(store)
        policy = RetrainPolicy(
            min_new_labels=cfg.labels_per_round, promotion_margin=0.0, recall_tolerance=0.05,
            min_examples_per_label=3, epochs=cfg.epochs, learning_rate=cfg.learning_rate,
            max_length=cfg.max_length, time_budget_s=cfg.job_time_budget_s)
        ccfg, api_key = tenants.create(ClassifierConfig(
            name=name, labels=labels, threshold=cfg.threshold, review_window=cfg.review_window, retrain=policy,
            description=f"sift demo on {cfg.corpus}"))
        say(f"[loop] classifier {name!r}: {len(labels)} labels, threshold {cfg.threshold}, "
            f"retrain after {cfg.labels_per_round} reviewed labels")

        seed_rows = seed_sample(pool, cfg.seed_labels, cfg.min_per_label, cfg.seed)
        store_seed(store, name, seed_rows, source=f"{cfg.corpus} (sift demo seed)")
        train_part, held = split_for_training(name, seed_rows, policy.eval_share)
        say(f"[loop] training the seed model on {len(train_part)} labels ({len(held)} held out for blessing)")
        reg = train_and_register(
            ccfg, train_part, registry=Registry(settings), eval_rows=held, run_name=f"seed-{name}",
            spec=train_spec(ccfg, num_hidden_layers=cfg.num_hidden_layers, max_length=cfg.max_length,
                            epochs=cfg.seed_epochs, learning_rate=cfg.learning_rate, seed=cfg.seed),
            progress=False)
        say(f"[loop] seed model v{reg.version} registered as champion in {reg.seconds:.0f} s")

        py = sys.executable
        api_port = cfg.port_base + 800
        stack.spawn("demo-api", [py, "-m", "uvicorn", "sift.app:create_app", "--factory", "--host", "127.0.0.1",
                                 "--port", str(api_port), "--no-access-log"], ready_port=api_port)
        for worker in ("review", "reconcile", "retrain"):
            stack.spawn(f"demo-worker-{worker}", [py, "-m", "sift.cli", "worker", worker])
        api = ApiClient(settings.public_api_url, name, api_key)
        probe = seed_rows[0].text
        _wait(lambda: api.served_version(probe) == reg.version, 180, "the API to serve the seed model")
        cache = Path(cfg.data_dir) / "demo-eval-cache"
        version = reg.version
        acc, f1 = score_version(settings, name, version, test, cache)
        versions = [VersionResult(round=0, version=version, accuracy=acc, macro_f1=f1, labels_used=len(train_part),
                                  reviewed_labels=0, job_status="seed")]
        say(f"[loop] v{version} (seed, served by the API): accuracy {acc:.3f}, macro-F1 {f1:.3f} on {len(test)} "
            "held-out test texts")
        seed_texts = {r.text for r in seed_rows}
        traffic = [r for r in pool if r.text not in seed_texts]
        rounds: list[RoundLog] = []
        reviewer: SimulatedReviewer | None = None
        for rnd in range(1, cfg.rounds + 1):
            chunk = traffic[(rnd - 1) * cfg.traffic_per_round: rnd * cfg.traffic_per_round]
            jobs_before = {j.job_id for j in list_jobs(store, name, limit=100)}
            items_prefix = f"review/{name}/items/"  # the review stage's queue records, one per text
            seen_before = sum(1 for _ in store.list_keys(items_prefix))
            results = api.classify([r.text for r in chunk])
            routed = sum(bool(r["review_requested"]) for r in results)
            say(f"[loop] round {rnd}: streamed {len(chunk)} texts, {routed} below the threshold -> review")
            # the reviewer starts once the worker has taken this round's requests in (a reviewer who
            # arrives to a full queue): answering while requests still stream in would hand out tasks
            # in arrival order, and the demo would not show what the priority order picks
            target = seen_before + routed
            _wait(lambda p=items_prefix, n=target: sum(1 for _ in store.list_keys(p)) >= n,
                  cfg.round_timeout_s, "the review worker to take in the requests", interval=2.0)
            if reviewer is None:
                pid = _wait(lambda: tenants.require(name).label_studio_project_id, 120, "the review project")
                reviewer = SimulatedReviewer(settings, int(pid), truth)
            t0 = time.monotonic()
            margins = reviewer.review(cfg.labels_per_round, cfg.round_timeout_s)
            review_s = time.monotonic() - t0
            say(f"[loop] round {rnd}: reviewer answered {len(margins)} tasks in {review_s:.0f} s "
                f"(mean top-2 margin {sum(margins) / max(1, len(margins)):.3f})")
            t1 = time.monotonic()

            def finished_job(before: set[str] = jobs_before) -> Any:
                return next((j for j in list_jobs(store, name, limit=100) if j.job_id not in before and j.done), None)

            job = _wait(finished_job, cfg.round_timeout_s, "the retrain job", interval=2.0)
            job_s = time.monotonic() - t1
            say(f"[loop] round {rnd}: retrain job {job.status} after {job_s:.0f} s: {job.reason}")
            served_after = None
            if job.status == "promoted" and job.champion_after:
                t2 = time.monotonic()
                _wait(lambda v=job.champion_after: api.served_version(probe) == v, 180, "the API to swap models")
                served_after = round(time.monotonic() - t2, 1)
            reviewed, _ = read_reviewed(store, name)
            version = api.served_version(probe)
            acc, f1 = score_version(settings, name, version, test, cache)
            used = (job.dataset.train_counts if job.dataset else {})
            versions.append(VersionResult(
                round=rnd, version=version, accuracy=acc, macro_f1=f1,
                labels_used=sum(used.values()) if job.status == "promoted" else versions[-1].labels_used,
                reviewed_labels=len(reviewed), job_status=job.status, job_reason=job.reason,
                served_after_s=served_after))
            rounds.append(RoundLog(round=rnd, streamed=len(chunk), routed_to_review=routed, answered=len(margins),
                                   answered_by_margin=margins, reviewer_seconds=round(review_s, 1),
                                   job_seconds=round(job_s, 1)))
            say(f"[loop] served v{version}: accuracy {acc:.3f}, macro-F1 {f1:.3f} "
                f"({versions[-1].labels_used} training labels, {len(reviewed)} reviewed so far)")
        return LoopResult(config=cfg, classifier=name, versions=versions, rounds=rounds,
                          seconds=round(time.monotonic() - started, 1), stack_start_seconds=round(stack_s, 1))
    finally:
        if api is not None:
            api.close()
        if cfg.keep_stack:  # leave S3/Kafka/MLflow/Label Studio up for a look; stop only our processes
            for proc in reversed(list(stack.commands.values())):
                with contextlib.suppress(Exception):
                    proc.stop()
        else:
            stack.stop()
