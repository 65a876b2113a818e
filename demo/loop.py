"""Part B of ``sift demo``: uncertainty vs random routing through the running product, nothing mocked.

The local stack (SeaweedFS S3, Tansu Kafka, MLflow, Label Studio) runs once from a demo data folder
on its own loopback ports; the API (``sift.app:create_app`` under uvicorn) and the review, reconcile
and retrain workers (several retrain workers, so jobs of different classifiers overlap) run as the
same processes ``sift up`` starts. Each (arm, seed) is its own classifier on that stack, so the arms
run side by side as tenants. The *uncertainty* arm routes by confidence (threshold); the *random*
arm routes nothing by confidence and sends an audit sample (``review_sample_rate``) instead, whose
window order is a random draw. This module only drives them from outside, as an app and a human would:

1. onboard the classifiers (review project included), train one seed model per seed and register
   it for each arm of that seed (the ``sift train`` path, seed rows stored in S3 so every retrain
   rebuilds on them);
2. per round, stream unseen pool texts (the seed's traffic, the same for both arms) to
   ``POST /classify`` until a round's labels wait in review; the API routes them to Kafka, the
   review worker turns them into Label Studio tasks (a window of open tasks, most urgent first);
3. a simulated reviewer answers ``labels_per_round`` tasks with the corpus' true label through the
   Label Studio API (``annotations.create``), exactly like a person clicking Submit;
4. the collector (webhook in the API, reconciliation worker as a safety net) writes reviewed
   labels; a retrain worker counts them and runs a job at ``min_new_labels`` (assemble, validate,
   warm + fresh candidates, the bootstrap gate, promote, model-event); its verdict is recorded;
5. the API swaps models (checked by what ``/classify`` answers), and the served version is scored on
   the held-out test set with the product's ``evaluate`` (see ``score_version`` for why not via the API).

It imports only ``infra``, ``model``, ``retrain`` (the seed model, scoring, job records) and
``sift.onboarding`` (onboarding, as ``sift classifiers create``); it talks to the classifier, review
and collector through HTTP, Kafka and Label Studio.
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


ARMS = ("uncertainty", "random")


class LoopConfig(BaseModel):
    data_dir: Path = Path(".stack/demo")
    port_base: int = Field(default=26000, description="S3 +333, Kafka +92, MLflow +500, Label Studio +80, API +800")
    prefix: str = ""  # classifier names <prefix>-<arm>-s<seed>; default demo-<time>, so runs never mix
    corpus: str = "reuters-r8"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = Field(default_factory=lambda: list(ARMS))
    seed_labels: int = 150
    min_per_label: int = 8
    rounds: int = 4
    labels_per_round: int = 40
    traffic_chunk: int = Field(default=100, description="texts streamed at a time until a round's labels wait")
    threshold: float = Field(default=0.9, description="uncertainty arm: confidence routing")
    sample_rate: float = Field(default=0.2, description="random arm: review_sample_rate (audit sample)")
    review_window: int = 25
    test_size: int = 600
    pool_size: int = 2000
    num_hidden_layers: int = 2
    max_length: int = 64
    seed_epochs: float = 8
    epochs: int = 3
    learning_rate: float = 5e-4
    job_time_budget_s: float = 240.0
    retrain_workers: int = Field(default=2, description="jobs of different classifiers overlap")
    keep_stack: bool = False
    round_timeout_s: float = 900.0


RANDOM_ARM_THRESHOLD = 1e-6  # below any top-label confidence (>= 1/labels): confidence routing routes nothing


class VersionResult(BaseModel):
    round: int
    version: str
    accuracy: float
    macro_f1: float
    labels_used: int = Field(description="seed labels + reviewed labels the served model's training set held")
    reviewed_labels: int
    job_status: str = ""
    job_reason: str = ""
    gain: float | None = Field(default=None, description="gate: candidate minus champion macro-F1, eval set")
    gain_interval: tuple[float, float] | None = Field(default=None, description="its bootstrap interval")
    gate_confidence: float | None = None
    served_after_s: float | None = Field(default=None, description="job done -> API answers with it")


class RoundLog(BaseModel):
    round: int
    streamed: int
    routed_to_review: int
    answered: int
    answered_origins: dict[str, int] = Field(default_factory=dict)
    answered_confidence: list[float] = Field(default_factory=list, description="model confidence of each answer")
    reviewer_seconds: float
    job_seconds: float | None = None


class ArmResult(BaseModel):
    arm: str
    seed: int
    classifier: str
    versions: list[VersionResult]
    rounds: list[RoundLog]
    seconds: float


class LoopPoint(BaseModel):
    round: int
    labels_mean: float
    macro_f1_mean: float
    macro_f1_min: float
    macro_f1_max: float
    macro_f1_std: float
    accuracy_mean: float


class LoopResult(BaseModel):
    config: LoopConfig
    arms: list[ArmResult]
    curves: dict[str, list[LoopPoint]] = Field(default_factory=dict, description="per arm, over seeds")
    seconds: float
    stack_start_seconds: float
    load_before: list[float] = Field(default_factory=list, description="1/5/15-min load average at start")
    load_after: list[float] = Field(default_factory=list)


def curves(arms: list[ArmResult]) -> dict[str, list[LoopPoint]]:
    """Served macro-F1 per round of each arm: mean, min-max and std over its seeds."""
    import statistics

    from demo.experiment import spread

    out: dict[str, list[LoopPoint]] = {}
    for arm in dict.fromkeys(a.arm for a in arms):
        runs = [a for a in arms if a.arm == arm]
        points = []
        for rnd in range(min(len(a.versions) for a in runs)):
            vs = [a.versions[rnd] for a in runs]
            points.append(LoopPoint(
                round=rnd, labels_mean=statistics.fmean(v.labels_used for v in vs),
                **spread("macro_f1", [v.macro_f1 for v in vs]),
                accuracy_mean=statistics.fmean(v.accuracy for v in vs)))
        out[arm] = points
    return out


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
        try:
            self.client.annotations.create(id=int(task["id"]), result=[{
                "from_name": self.from_name, "to_name": self.to_name, "type": "choices",
                "value": {"choices": [label]}}])
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:  # displaced by a more urgent request meanwhile:
                return None  # gone from the window, as a person's open task can be; its text comes back later
            raise
        return label

    def review(self, n: int, timeout_s: float) -> list[tuple[str, float]]:
        """Answer ``n`` tasks as they appear (the worker refills the window every few seconds).

        Oldest task first, as Label Studio Community shows them. Returns each answered task's
        (origin, model confidence) from the task data the worker wrote: what reached the reviewer.
        """
        deadline = time.monotonic() + timeout_s
        answered: list[tuple[str, float]] = []
        while len(answered) < n and time.monotonic() < deadline:
            tasks = sorted(self.open_tasks(), key=lambda t: int(t["id"]))
            if not tasks:
                time.sleep(1.0)
                continue
            for task in tasks[: n - len(answered)]:
                if self.answer(task) is not None:
                    data = task.get("data") or {}
                    conf = data.get("confidence")
                    answered.append((str(data.get("origin")),
                                     round(float(conf), 4) if isinstance(conf, int | float) else float("nan")))
        return answered


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

def copy_champion(registry: Any, cfg: Any, source: Any, model_dir: Path) -> str:
    """Register ``source`` (a ``RegisteredModel`` trained for another arm of the same seed) as
    ``cfg``'s champion: both arms start from the very same seed model, trained once."""
    from model.evaluate import REFERENCE_ARTIFACT

    run_id = registry.create_run(cfg.name, run_name=f"seed-{cfg.name}", tags={
        "sift.classifier": cfg.name, "sift.copied_from": f"{source.classifier} v{source.version}"})
    registry.log_params(run_id, registry.run_info(source.run_id)["params"])
    registry.log_artifacts(run_id, model_dir, "model")
    reference = registry.load_dict(source.run_id, REFERENCE_ARTIFACT)
    if reference is not None:
        registry.log_dict(run_id, reference, REFERENCE_ARTIFACT)
    ref = registry.register(cfg.name, run_id, artifact_path="model", tags={
        k: f"{source.metrics[k]:.6f}" for k in ("accuracy", "macro_f1") if k in source.metrics})
    registry.set_champion(cfg.name, ref.version, expected=None)
    registry.end_run(run_id)
    return str(ref.version)


class _Arm:
    """One (arm, seed): its classifier, key, seed rows and traffic (the seed's, shared by its arms)."""

    def __init__(self, arm: str, seed: int, name: str, key: str, seed_rows: list[LabeledText],
                 train_size: int, traffic: list[LabeledText]) -> None:
        self.arm, self.seed, self.name, self.key = arm, seed, name, key
        self.seed_rows, self.train_size, self.traffic = seed_rows, train_size, traffic
        self.version = ""


def _run_arm(cfg: LoopConfig, a: _Arm, settings: Settings, truth: dict[str, str], test: list[LabeledText],
             say: Say) -> ArmResult:
    """``cfg.rounds`` rounds of one classifier: stream, review, retrain, swap, score (see the module doc)."""
    from infra.objectstore import ObjectStore
    from infra.tenants import TenantStore
    from retrain.assemble import read_reviewed
    from retrain.job import list_jobs

    started = time.monotonic()
    store = ObjectStore(settings)
    tenants = TenantStore(store)
    api = ApiClient(settings.public_api_url, a.name, a.key)
    tag = f"[{a.arm} s{a.seed}]"
    cache = Path(cfg.data_dir) / "demo-eval-cache"
    probe = a.seed_rows[0].text
    try:
        _wait(lambda: api.served_version(probe) == a.version, 300, f"{a.name}: the API to serve the seed model")
        acc, f1 = score_version(settings, a.name, a.version, test, cache)
        versions = [VersionResult(round=0, version=a.version, accuracy=acc, macro_f1=f1, labels_used=a.train_size,
                                  reviewed_labels=0, job_status="seed")]
        say(f"{tag} seed v{a.version}: macro-F1 {f1:.3f}, accuracy {acc:.3f}")
        pid = _wait(lambda: tenants.require(a.name).label_studio_project_id, 120, "the review project")
        reviewer = SimulatedReviewer(settings, int(pid), truth)
        items_prefix = f"review/{a.name}/items/"  # the review stage's queue records, one per text
        rounds: list[RoundLog] = []
        cursor = routed_total = answered_total = 0
        for rnd in range(1, cfg.rounds + 1):
            jobs_before = {j.job_id for j in list_jobs(store, a.name, limit=100)}
            streamed = routed = 0
            # a product sees traffic until reviewers have work: stream until a round's labels wait
            while routed_total - answered_total < cfg.labels_per_round and cursor < len(a.traffic):
                chunk = a.traffic[cursor: cursor + cfg.traffic_chunk]
                cursor += len(chunk)
                n = sum(bool(r["review_requested"]) for r in api.classify([r.text for r in chunk]))
                streamed, routed, routed_total = streamed + len(chunk), routed + n, routed_total + n
            # the reviewer starts once the worker has taken this round's requests in (a reviewer who
            # arrives to a full queue): answering while requests still stream in would hand out tasks
            # in arrival order, and the demo would not show what the window's order picks
            _wait(lambda t=routed_total: sum(1 for _ in store.list_keys(items_prefix)) >= t,
                  cfg.round_timeout_s, f"{a.name}: the review worker to take in the requests", interval=2.0)
            t0 = time.monotonic()
            answers = reviewer.review(cfg.labels_per_round, cfg.round_timeout_s)
            answered_total += len(answers)
            review_s = time.monotonic() - t0
            origins: dict[str, int] = {}
            for origin, _ in answers:
                origins[origin] = origins.get(origin, 0) + 1
            confs = [c for _, c in answers]
            say(f"{tag} round {rnd}: streamed {streamed}, routed {routed}; reviewer answered {len(answers)} "
                f"({origins}, mean confidence {sum(confs) / max(1, len(confs)):.3f})")
            t1 = time.monotonic()

            def finished_job(before: set[str] = jobs_before) -> Any:
                # "busy": a second retrain worker found the lease taken; the job that holds it reports
                return next((j for j in list_jobs(store, a.name, limit=100)
                             if j.job_id not in before and j.done and j.status != "busy"), None)

            job = _wait(finished_job, cfg.round_timeout_s, f"{a.name}: the retrain job", interval=2.0)
            job_s = time.monotonic() - t1
            served_after = None
            if job.status == "promoted" and job.champion_after:
                t2 = time.monotonic()
                _wait(lambda v=job.champion_after: api.served_version(probe) == v, 180, "the API to swap models")
                served_after = round(time.monotonic() - t2, 1)
            reviewed, _ = read_reviewed(store, a.name)
            version = api.served_version(probe)
            if version != versions[-1].version:
                acc, f1 = score_version(settings, a.name, version, test, cache)
            else:
                acc, f1 = versions[-1].accuracy, versions[-1].macro_f1
            used = (job.dataset.train_counts if job.dataset else {})
            gate = job.verdict.gate if job.verdict is not None else None
            versions.append(VersionResult(
                round=rnd, version=version, accuracy=acc, macro_f1=f1,
                labels_used=sum(used.values()) if job.status == "promoted" else versions[-1].labels_used,
                reviewed_labels=len(reviewed), job_status=job.status, job_reason=job.reason,
                gain=gate.gain if gate else None, gain_interval=gate.gain_interval if gate else None,
                gate_confidence=gate.confidence if gate else None, served_after_s=served_after))
            rounds.append(RoundLog(round=rnd, streamed=streamed, routed_to_review=routed, answered=len(answers),
                                   answered_origins=origins, answered_confidence=confs,
                                   reviewer_seconds=round(review_s, 1), job_seconds=round(job_s, 1)))
            say(f"{tag} round {rnd}: job {job.status} after {job_s:.0f} s; served v{version}: macro-F1 {f1:.3f}, "
                f"accuracy {acc:.3f} ({versions[-1].labels_used} training labels)")
        return ArmResult(arm=a.arm, seed=a.seed, classifier=a.name, versions=versions, rounds=rounds,
                         seconds=round(time.monotonic() - started, 1))
    finally:
        api.close()


def run_loop(cfg: LoopConfig, pool: list[LabeledText], test: list[LabeledText], say: Say = print) -> LoopResult:
    """Start the demo stack once and run every (arm, seed) classifier side by side through it."""
    import os
    import random
    from concurrent.futures import ThreadPoolExecutor

    from infra.bus import Bus
    from infra.local.stack import LocalStack
    from infra.objectstore import ObjectStore
    from infra.registry import Registry
    from infra.tenants import ClassifierConfig, RetrainPolicy, TenantStore
    from retrain.assemble import split_for_training
    from retrain.seed import store_seed
    from retrain.tracking import train_and_register, train_spec
    from sift.onboarding import create_classifier  # what `sift classifiers create` does: the review project too

    unknown = set(cfg.arms) - set(ARMS)
    if unknown or not cfg.arms or not cfg.seeds:
        raise ValueError(f"arms must be among {ARMS} and seeds non-empty (got {cfg.arms}, {cfg.seeds})")
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    settings = demo_settings(cfg)
    prefix = cfg.prefix or f"demo-{datetime.now(UTC):%m%d-%H%M%S}"
    labels = sorted({r.label for r in [*pool, *test]})
    truth = {r.text: r.label for r in pool}
    stack = LocalStack(settings, die_with_parent=not cfg.keep_stack)
    say(f"[loop] starting the local stack in {Path(cfg.data_dir).resolve()} (Label Studio's first start takes ~2 min)")
    stack.start(with_label_studio=True)
    stack_s = time.monotonic() - started
    try:
        Bus(settings).ensure_topics()
        store = ObjectStore(settings)
        store.ensure_bucket()
        tenants = TenantStore(store)
        registry = Registry(settings)
        policy = RetrainPolicy(
            min_new_labels=cfg.labels_per_round, promotion_margin=0.0, recall_tolerance=0.05,
            min_examples_per_label=3, epochs=cfg.epochs, learning_rate=cfg.learning_rate,
            max_length=cfg.max_length, time_budget_s=cfg.job_time_budget_s)
        arms: list[_Arm] = []
        for seed in cfg.seeds:
            seed_rows = seed_sample(pool, cfg.seed_labels, cfg.min_per_label, seed)
            seed_texts = {r.text for r in seed_rows}
            traffic = [r for r in pool if r.text not in seed_texts]
            random.Random(seed).shuffle(traffic)
            trained = None
            for arm in cfg.arms:
                uncertain = arm == "uncertainty"
                ccfg, key, _ = create_classifier(settings, tenants, ClassifierConfig(
                    name=f"{prefix}-{arm[:3]}-s{seed}", labels=labels, review_window=cfg.review_window,
                    threshold=cfg.threshold if uncertain else RANDOM_ARM_THRESHOLD,
                    review_sample_rate=0.0 if uncertain else cfg.sample_rate, retrain=policy,
                    description=f"sift demo on {cfg.corpus}: {arm} arm, seed {seed}"))
                store_seed(store, ccfg.name, seed_rows, source=f"{cfg.corpus} (sift demo seed {seed})")
                train_part, held = split_for_training(ccfg.name, seed_rows, policy.eval_share)
                if trained is None:
                    work = Path(cfg.data_dir) / "demo-seed-models" / ccfg.name
                    t0 = time.monotonic()
                    reg = train_and_register(
                        ccfg, train_part, registry=registry, eval_rows=held, run_name=f"seed-{ccfg.name}",
                        spec=train_spec(ccfg, num_hidden_layers=cfg.num_hidden_layers, max_length=cfg.max_length,
                                        epochs=cfg.seed_epochs, learning_rate=cfg.learning_rate, seed=seed),
                        work_dir=work, progress=False)
                    trained = (reg, reg.model_dir)
                    version = reg.version
                    say(f"[loop] seed {seed}: seed model trained on {len(train_part)} labels ({len(held)} held out "
                        f"for blessing) in {time.monotonic() - t0:.0f} s")
                else:
                    version = copy_champion(registry, ccfg, trained[0], Path(trained[1]))
                a = _Arm(arm, seed, ccfg.name, key, seed_rows, len(train_part), traffic)
                a.version = version
                arms.append(a)
        say(f"[loop] {len(arms)} classifiers ({', '.join(cfg.arms)} × seeds {cfg.seeds}): uncertainty routes "
            f"confidence < {cfg.threshold}, random audits {cfg.sample_rate:.0%} of traffic; retrain after "
            f"{cfg.labels_per_round} reviewed labels, {cfg.rounds} rounds")

        py = sys.executable
        api_port = cfg.port_base + 800
        stack.spawn("demo-api", [py, "-m", "uvicorn", "sift.app:create_app", "--factory", "--host", "127.0.0.1",
                                 "--port", str(api_port), "--no-access-log"], ready_port=api_port)
        workers = ["review", "reconcile"] + ["retrain"] * cfg.retrain_workers
        for i, worker in enumerate(workers):
            stack.spawn(f"demo-worker-{worker}-{i}", [py, "-m", "sift.cli", "worker", worker])
        with ThreadPoolExecutor(max_workers=len(arms), thread_name_prefix="demo-arm") as pool_:
            futures = [pool_.submit(_run_arm, cfg, a, settings, truth, test, say) for a in arms]
            results = [f.result() for f in futures]
        return LoopResult(config=cfg, arms=results, curves=curves(results),
                          seconds=round(time.monotonic() - started, 1), stack_start_seconds=round(stack_s, 1),
                          load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()])
    finally:
        if cfg.keep_stack:  # leave S3/Kafka/MLflow/Label Studio up for a look; stop only our processes
            for proc in reversed(list(stack.commands.values())):
                with contextlib.suppress(Exception):
                    proc.stop()
        else:
            stack.stop()
