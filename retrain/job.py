"""One retrain job: assemble -> validate -> train candidates -> evaluate -> select -> bless -> package ->
promote.

The champion is touched in exactly one place, the final promotion: any failure before it leaves
the serving model as it was, raises an alert and records why in the job record
(``retrain/<c>/jobs/<id>.json``, updated after every phase so the admin API can show progress).
A per-classifier lease makes jobs of one classifier run one at a time wherever they start.

Candidates: by default one warm-started from the champion (keeps what it knows, cheap to improve)
and one fresh from the base encoder (escapes a champion that learned something wrong), with the
champion's depth so the comparison is about data, not size. Each is an MLflow run registered as a
version with its lineage. On CPU the candidates train side by side, each in a spawned process with
its share of the cores (``SIFT_RETRAIN_PARALLEL_CANDIDATES``): one thread per candidate uses two
cores better than two threads per candidate in turn, and a process of its own keeps each training
deterministic (dropout draws from torch's process-wide generator). In turn, the job's time budget is
shared between the candidates still to train; side by side, each has all of it.

Package: the blessed version's serving graph (ONNX, int8 by default) is exported, checked and
added to the version once here, so every replica opens it instead of exporting on its own serving
cores (most of a cold load). A model that cannot be exported is still promoted: replicas serve it
with torch, as they would after a failed export of their own; the job record says why.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from infra.local.procs import die_with_parent
from infra.objectstore import ObjectStore
from infra.registry import ChampionMoved, ModelRef, Registry
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from model import has_accelerator
from model.evaluate import EvalReport, evaluate
from model.format import read_meta
from retrain import paths
from retrain.alerts import DURATION, JOBS, PHASES, RUNNING_SINCE, alert
from retrain.assemble import AssembledDataset, DatasetVersion, assemble
from retrain.bless import Verdict, bless, record_verdict
from retrain.lock import ClassifierLease, LeaseLost, LockBusy
from retrain.promote import Publish, bus_publish, promote
from retrain.triggers import Triggers
from retrain.validate import ValidationReport, validate

if TYPE_CHECKING:
    from retrain.tracking import RegisteredModel

log = logging.getLogger(__name__)

Status = Literal["running", "promoted", "not_promoted", "data_rejected", "failed", "busy"]


class CandidateSpec(BaseModel):
    """One candidate to train; unset hyperparameters come from the classifier's retrain policy."""

    name: str
    init: Literal["champion", "base"]
    epochs: float | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    max_length: int | None = None
    num_hidden_layers: int | None = None
    seed: int = 0


class JobOptions(BaseModel):
    trigger: str = "manual"
    job_id: str | None = None
    candidates: list[CandidateSpec] | None = None
    time_budget_s: float | None = Field(default=None, description="overrides the policy's, for the whole job")
    lease_ttl_s: float = 120.0


class Phase(BaseModel):
    name: str
    seconds: float
    started_at: datetime


class CandidateResult(BaseModel):
    name: str
    init: str
    version: str | None = None
    run_id: str | None = None
    macro_f1: float | None = None
    accuracy: float | None = None
    train_seconds: float | None = None
    stopped_by_time_budget: bool = False
    error: str | None = None


class JobRecord(BaseModel):
    job_id: str
    classifier: str
    trigger: str
    status: Status = "running"
    reason: str = ""
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    phases: list[Phase] = Field(default_factory=list)
    new_labels: int = 0
    dataset: DatasetVersion | None = None
    validation: ValidationReport | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    champion_macro_f1: float | None = None
    candidates: list[CandidateResult] = Field(default_factory=list)
    selected_version: str | None = None
    verdict: Verdict | None = None
    serving_graph: str | None = None  # the packaged graph's artifact path, or "none: <why>"
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status != "running"


def new_job_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def save_job(store: ObjectStore, record: JobRecord) -> None:
    store.put_json(paths.job(record.classifier, record.job_id), record.model_dump(mode="json"))


def load_job(store: ObjectStore, classifier: str, job_id: str) -> JobRecord | None:
    data = store.get_json(paths.job(classifier, job_id))
    return None if data is None else JobRecord.model_validate(data)


def list_jobs(store: ObjectStore, classifier: str, limit: int = 20) -> list[JobRecord]:
    keys = sorted(store.list_keys(paths.jobs_prefix(classifier)), reverse=True)[:limit]
    return [JobRecord.model_validate(store.get_json(k)) for k in keys]


def default_candidates(champion_meta: dict | None) -> list[CandidateSpec]:
    if champion_meta is None:
        return [CandidateSpec(name="fresh", init="base", seed=0),
                CandidateSpec(name="fresh-seed1", init="base", seed=1)]
    layers = (champion_meta.get("params") or {}).get("num_hidden_layers")
    return [CandidateSpec(name="warm", init="champion"),
            CandidateSpec(name="fresh", init="base", num_hidden_layers=int(layers) if layers else None)]


class RetrainJob:
    """Holds the collaborators of one job; ``run()`` never raises for job failures (see the record)."""

    def __init__(self, settings: Settings, classifier: str, options: JobOptions | None = None, *,
                 store: ObjectStore | None = None, registry: Registry | None = None,
                 publish: Publish | None = None) -> None:
        self.settings = settings
        self.options = options or JobOptions()
        self.store = store or ObjectStore(settings)
        self.registry = registry or Registry(settings)
        self.publish = publish or bus_publish(settings)
        self.record = JobRecord(job_id=self.options.job_id or new_job_id(), classifier=classifier,
                                trigger=self.options.trigger)
        self._lease: ClassifierLease | None = None
        self._labels_at_start: int | None = None

    # ---- bookkeeping -----------------------------------------------------------------------------

    def save(self) -> None:
        try:
            save_job(self.store, self.record)
        except Exception:  # the job's outcome matters more than its progress record
            log.warning("could not save job record %s", self.record.job_id, exc_info=True)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started, t0 = datetime.now(UTC), time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - t0
            self.record.phases.append(Phase(name=name, seconds=round(seconds, 3), started_at=started))
            PHASES.labels(self.record.classifier, name.split(":", 1)[0]).observe(seconds)
            self.save()

    def _finish(self, status: Status, reason: str, cfg: ClassifierConfig | None = None, *,
                alert_stage: str | None = None) -> JobRecord:
        r = self.record
        r.status, r.reason, r.finished_at = status, reason, datetime.now(UTC)
        with contextlib.suppress(Exception):
            r.champion_after = (self.registry.champion(r.classifier) or ModelRef("", "", None, "")).version or None
        if status not in ("failed", "busy") and self._labels_at_start is not None:
            try:  # a job that ran to a verdict took these labels; a failed one leaves the trigger armed
                Triggers(self.store).job_done(r.classifier, r.job_id, r.trigger, self._labels_at_start)
            except Exception:
                log.warning("could not record that job %s took its labels", r.job_id, exc_info=True)
        self.save()
        JOBS.labels(r.classifier, status).inc()
        DURATION.labels(r.classifier).observe((r.finished_at - r.started_at).total_seconds())
        if alert_stage:
            alert(r.classifier, alert_stage, reason, webhook_url=cfg.retrain.alert_webhook_url if cfg else None,
                  operator_url=self.settings.alert_webhook_url, details={"job_id": r.job_id, "status": status})
        log.info("retrain job %s of %s: %s (%s)", r.job_id, r.classifier, status, reason)
        return r

    # ---- the job ---------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the classifier's lease now (raises LockBusy): lets a caller answer 409 before starting a thread."""
        if self._lease is None:
            lease = ClassifierLease(self.store, self.record.classifier, ttl_s=self.options.lease_ttl_s,
                                    holder=f"job {self.record.job_id}")
            self._lease = lease.acquire()

    def run(self) -> JobRecord:
        c = self.record.classifier
        self.save()
        try:
            self.acquire()
        except LockBusy as exc:
            return self._finish("busy", str(exc))
        lease = self._lease
        assert lease is not None
        cfg: ClassifierConfig | None = None
        work = Path(tempfile.mkdtemp(prefix=f"sift-retrain-{c}-"))
        RUNNING_SINCE.labels(c).set(time.time())  # a stuck job shows as an ever older start
        try:
            cfg = TenantStore(self.store).require(c)
            triggers = Triggers(self.store)
            self._labels_at_start = triggers.state(c).labels_total
            self.record.new_labels = triggers.new_labels(c)
            return self._run(cfg, work)
        except Exception as exc:
            log.exception("retrain job %s of %s failed", self.record.job_id, c)
            self.record.error = f"{type(exc).__name__}: {exc}"
            return self._finish("failed", f"job failed: {self.record.error}; the champion keeps serving", cfg,
                                alert_stage="job")
        finally:
            RUNNING_SINCE.labels(c).set(0)
            lease.release()
            self._lease = None
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, cfg: ClassifierConfig, work: Path) -> JobRecord:
        r = self.record
        with self.phase("assemble"):
            ds = assemble(self.store, cfg)
            r.dataset = ds.version
        with self.phase("validate"):
            report = validate(ds, cfg.labels, cfg.retrain)
            r.validation = report
            self.store.put_json(paths.validation_report(cfg.name, r.job_id), report.model_dump(mode="json"))
        if not report.ok:
            return self._finish("data_rejected", f"dataset {ds.version.version_id} failed validation: "
                                f"{report.summary()}; the champion keeps serving", cfg, alert_stage="validate")

        with self.phase("load_champion"):
            champion = self.registry.champion(cfg.name)
            champ_dir = str(self.registry.download(champion)) if champion else None
            r.champion_before = champion.version if champion else None
            champ_meta = read_meta(champ_dir) if champ_dir else None

        trained = self._train_candidates(cfg, ds, champion, champ_dir, champ_meta, work)
        if not trained:
            errors = "; ".join(f"{x.name}: {x.error}" for x in r.candidates)
            return self._finish("failed", f"no candidate could be trained ({errors}); the champion keeps serving",
                                cfg, alert_stage="train")

        with self.phase("evaluate"):
            scored_as = {"long_text": self.settings.long_text_strategy}  # the window serving uses
            reports = {name: evaluate(model_dir, ds.eval, **scored_as) for name, model_dir in trained.items()}
            champ_report: EvalReport | None = None
            if champ_dir:
                try:
                    champ_report = evaluate(champ_dir, ds.eval, **scored_as)
                    r.champion_macro_f1 = champ_report.macro_f1
                except ValueError as exc:  # the label set changed: the champion cannot be scored on it
                    log.warning("champion v%s cannot be scored on the eval set: %s", r.champion_before, exc)
            for cand in r.candidates:
                if cand.name in reports:
                    cand.macro_f1, cand.accuracy = reports[cand.name].macro_f1, reports[cand.name].accuracy

        with self.phase("bless"):
            ok = [x for x in r.candidates if x.name in reports]
            best = max(ok, key=lambda x: (x.macro_f1 or 0.0, x.accuracy or 0.0))
            r.selected_version = best.version
            for cand in ok:
                assert cand.version is not None
                v = bless(cfg.name, cand.version, reports[cand.name], r.champion_before, champ_report, cfg.retrain,
                          candidate=cand.name, selected=cand is best, dataset_version=ds.version.version_id,
                          job_id=r.job_id)
                if cand is not best:
                    v.reason = (f"not selected: candidate {best.name} (v{best.version}) has the higher macro-F1 "
                                f"({best.macro_f1:.4f} vs {cand.macro_f1:.4f}); gate alone: {v.reason}")
                    v.blessed = False
                else:
                    r.verdict = v
                record_verdict(self.registry, self.store, v)
                self._log_to_run(cand, reports[cand.name], v)

        verdict = r.verdict
        assert verdict is not None and best.version is not None
        if not verdict.blessed:
            return self._finish("not_promoted", f"v{best.version} ({best.name}) not promoted: {verdict.reason}", cfg)
        with self.phase("package"):
            r.serving_graph = self._package(best, trained[best.name])
        with self.phase("promote"):
            try:
                self._lease.check()  # a job whose lease expired or was taken over must not promote
                promote(self.registry, self.store, self.publish, cfg.name, best.version,
                        reports[best.name].flat_metrics(), expected=r.champion_before)
            except (LeaseLost, ChampionMoved) as exc:
                return self._finish("not_promoted", f"v{best.version} ({best.name}) blessed but not promoted: {exc}; "
                                    "the champion keeps serving", cfg, alert_stage="promote")
            except Exception as exc:
                champ_now = self.registry.champion(cfg.name)
                if champ_now is not None and champ_now.version == best.version:
                    alert(cfg.name, "publish", f"v{best.version} is champion but its model-event was not published: "
                          f"{exc}; replicas pick it up when they poll the registry",
                          webhook_url=cfg.retrain.alert_webhook_url, operator_url=self.settings.alert_webhook_url,
                          details={"job_id": r.job_id})
                else:
                    raise
        return self._finish("promoted", f"v{best.version} ({best.name}) promoted: {verdict.reason}", cfg)

    def _train_candidates(self, cfg: ClassifierConfig, ds: AssembledDataset, champion: ModelRef | None,
                          champ_dir: str | None, champ_meta: dict | None, work: Path) -> dict[str, str]:
        from retrain.tracking import train_spec

        r = self.record
        specs = self.options.candidates or default_candidates(champ_meta)
        specs = [s for s in specs if s.init == "base" or champ_dir]  # no champion: warm starts are impossible
        budget = self.options.time_budget_s or cfg.retrain.time_budget_s
        deadline = time.monotonic() + budget
        cores = os.cpu_count() or 1
        side_by_side = (self.settings.retrain_parallel_candidates and len(specs) > 1 and cores > 1
                        and not has_accelerator())

        def kwargs(spec: CandidateSpec, time_budget_s: float, threads: int | None) -> dict:
            warm = spec.init == "champion"
            return dict(
                cfg=cfg, rows=ds.train, eval_rows=ds.eval, make_champion_if_none=False,
                spec=train_spec(cfg, epochs=spec.epochs, learning_rate=spec.learning_rate,
                                batch_size=spec.batch_size, max_length=spec.max_length,
                                num_hidden_layers=None if warm else spec.num_hidden_layers,
                                init_from=champ_dir if warm else None, time_budget_s=time_budget_s,
                                seed=spec.seed, num_threads=threads),
                run_name=f"retrain-{r.job_id}-{spec.name}", work_dir=work / spec.name,
                parent_version=champion.version if warm and champion else None,
                extra_tags={"sift.job_id": r.job_id, "sift.candidate": spec.name, "sift.trigger": r.trigger,
                            "sift.dataset_version": ds.version.version_id,
                            "sift.champion_at_training": champion.version if champion else "none"},
                progress=False,
            )

        trained: dict[str, str] = {}
        if side_by_side:
            threads = max(1, cores // len(specs))
            context = multiprocessing.get_context("spawn")  # no torch/OpenMP state inherited from this process
            with self.phase("train"), ProcessPoolExecutor(len(specs), mp_context=context,
                                                          initializer=die_with_parent) as pool:
                futures: list[tuple[CandidateSpec, Future]] = [
                    (spec, pool.submit(train_candidate, self.settings, kwargs(spec, budget, threads)))
                    for spec in specs]
                for spec, future in futures:
                    self._collect(spec, future.result, ds, trained)
            return trained
        for i, spec in enumerate(specs):
            share = max(1.0, (deadline - time.monotonic()) / (len(specs) - i))
            with self.phase(f"train:{spec.name}"):
                args = kwargs(spec, share, None)
                self._collect(spec, lambda args=args: train_candidate(self.settings, args, self.registry), ds,
                              trained)
        return trained

    def _collect(self, spec: CandidateSpec, result: Callable[[], RegisteredModel], ds: AssembledDataset,
                 trained: dict[str, str]) -> None:
        """Record one candidate's training (or why it failed) in the job."""
        cand = CandidateResult(name=spec.name, init=spec.init)
        self.record.candidates.append(cand)
        try:
            reg = result()
        except Exception as exc:  # a failed (or killed) candidate leaves the others to compete
            log.exception("candidate %s of job %s failed", spec.name, self.record.job_id)
            cand.error = f"{type(exc).__name__}: {exc}"
            return
        cand.version, cand.run_id, cand.train_seconds = reg.version, reg.run_id, reg.seconds
        cand.stopped_by_time_budget = reg.stopped_by_time_budget
        self._link_dataset(cand, ds)
        assert reg.model_dir is not None
        trained[spec.name] = reg.model_dir

    def _package(self, cand: CandidateResult, model_dir: str) -> str | None:
        """Ship the serving graph replicas would otherwise export themselves; see the module docstring."""
        if self.settings.serving_runtime != "onnx":
            return None
        from model.onnx_export import SERVING_GRAPH_DIR, OnnxExportError, package_serving_graph

        assert cand.run_id
        try:
            graph = package_serving_graph(model_dir, quantize=self.settings.quantize == "int8")
        except OnnxExportError as exc:
            log.warning("v%s has no serving graph; replicas serve it with torch: %s", cand.version, exc)
            return f"none: {exc}"
        self.registry.log_artifacts(cand.run_id, graph.parent, f"model/{SERVING_GRAPH_DIR}")
        return f"model/{SERVING_GRAPH_DIR}/{graph.name}"

    def _link_dataset(self, cand: CandidateResult, ds: AssembledDataset) -> None:
        """The dataset version record goes into the run and onto the version: lineage in both places."""
        assert cand.run_id and cand.version
        self.registry.log_dict(cand.run_id, ds.version.model_dump(mode="json"), "dataset/version.json")
        self.registry.set_run_tag(cand.run_id, "sift.dataset_version", ds.version.version_id)
        for key, value in {"dataset_version": ds.version.version_id, "job_id": self.record.job_id,
                           "candidate": cand.name, "run_id": cand.run_id,
                           "eval_fingerprint": ds.version.eval_fingerprint}.items():
            self.registry.set_version_tag(self.record.classifier, cand.version, key, value)

    def _log_to_run(self, cand: CandidateResult, report: EvalReport, verdict: Verdict) -> None:
        assert cand.run_id
        metrics = {f"bless.{k}": float(v) for k, v in report.flat_metrics().items()}
        if verdict.champion_macro_f1 is not None:
            metrics["bless.champion_macro_f1"] = verdict.champion_macro_f1
        self.registry.log_metrics(cand.run_id, metrics)
        self.registry.log_dict(cand.run_id, verdict.model_dump(mode="json"), "report/verdict.json")
        self.registry.set_run_tag(cand.run_id, "sift.blessed", str(verdict.blessed).lower())


def train_candidate(settings: Settings, kwargs: dict, registry: Registry | None = None) -> RegisteredModel:
    """Train and register one candidate; module level so a spawned process can run it."""
    from retrain.tracking import train_and_register

    return train_and_register(registry=registry or Registry(settings), **kwargs)


def run_retrain_job(settings: Settings, classifier: str, options: JobOptions | None = None, *,
                    store: ObjectStore | None = None, registry: Registry | None = None,
                    publish: Publish | None = None) -> JobRecord:
    """Run one job to the end and return its record (reusable by the worker, CLI, API and ``sift demo``)."""
    return RetrainJob(settings, classifier, options, store=store, registry=registry, publish=publish).run()
