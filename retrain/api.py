"""Admin endpoints of the retrain stage (``x-admin-key``): start a job, follow it, roll back, list models.

A job runs in a background thread of the API process and answers 202 at once with its id;
progress and outcome are read back from the job record in the store, so any replica can answer
``GET .../retrain/{job_id}`` whichever replica runs the job.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from infra.http import KeyFirstRoute, Services, get_services, require_admin
from retrain.job import CandidateSpec, JobOptions, JobRecord, RetrainJob, list_jobs, load_job
from retrain.lock import LockBusy
from retrain.models import ModelSummary

router = APIRouter(prefix="/v1/admin/classifiers", tags=["retrain"], dependencies=[Depends(require_admin)],
                   route_class=KeyFirstRoute)


class RetrainRequest(BaseModel):
    time_budget_s: float | None = Field(default=None, gt=0)
    candidates: list[CandidateSpec] | None = Field(default=None, min_length=1)


class JobAccepted(BaseModel):
    job_id: str
    status: str
    status_url: str


class RollbackResult(BaseModel):
    classifier: str
    version: str
    action: str


def _require(services: Services, name: str) -> None:
    if services.tenants.get(name) is None:
        raise HTTPException(404, f"unknown classifier {name!r}")


@router.post("/{name}/retrain", status_code=202, response_model=JobAccepted)
def start_retrain(name: str, body: RetrainRequest | None = None,
                  services: Services = Depends(get_services)) -> JSONResponse:
    _require(services, name)
    body = body or RetrainRequest()
    options = JobOptions(trigger="api", time_budget_s=body.time_budget_s, candidates=body.candidates)
    job = RetrainJob(services.settings, name, options, store=services.store)
    try:
        job.acquire()  # taken here, so a second request gets 409 rather than a job that ends "busy"
    except LockBusy as exc:
        raise HTTPException(409, str(exc)) from exc
    job.save()  # visible to GET before the thread starts
    threading.Thread(target=job.run, name=f"retrain-{name}", daemon=True).start()
    url = f"/v1/admin/classifiers/{name}/retrain/{job.record.job_id}"
    return JSONResponse(JobAccepted(job_id=job.record.job_id, status="running", status_url=url).model_dump(),
                        status_code=202, headers={"location": url})


@router.get("/{name}/retrain/{job_id}", response_model=JobRecord)
def get_job(name: str, job_id: str, services: Services = Depends(get_services)) -> JobRecord:
    record = load_job(services.store, name, job_id)
    if record is None:
        raise HTTPException(404, f"no retrain job {job_id!r} for classifier {name!r}")
    return record


@router.get("/{name}/retrain", response_model=list[JobRecord])
def recent_jobs(name: str, limit: int = 20, services: Services = Depends(get_services)) -> list[JobRecord]:
    _require(services, name)
    return list_jobs(services.store, name, limit=min(max(limit, 1), 100))


@router.post("/{name}/rollback", response_model=RollbackResult)
def rollback_champion(name: str, services: Services = Depends(get_services)) -> RollbackResult:
    from infra.registry import Registry
    from retrain.promote import RollbackError, bus_publish, rollback

    _require(services, name)
    try:
        event = rollback(Registry(services.settings), services.store, bus_publish(services.settings), name)
    except RollbackError as exc:
        raise HTTPException(409, str(exc)) from exc
    return RollbackResult(classifier=name, version=event.version, action=event.action)


@router.get("/{name}/models", response_model=list[ModelSummary])
def models(name: str, services: Services = Depends(get_services)) -> list[ModelSummary]:
    from infra.registry import Registry
    from retrain.models import list_models

    _require(services, name)
    return list_models(Registry(services.settings), name)
