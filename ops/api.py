"""Admin API (``x-admin-key``): dead letters (as ``sift dlq``) and drift (as ``sift drift``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from infra.http import KeyFirstRoute, Services, get_services, require_admin
from infra.tenants import NotFound
from ops.deadletters import DeadLetterEntry, DeadLetterGroup, DeadLetters, NotReplayable
from ops.drift import Drift, DriftReport

router = APIRouter(prefix="/v1/admin/dead-letters", tags=["admin"], dependencies=[Depends(require_admin)],
                   route_class=KeyFirstRoute)


drift_router = APIRouter(prefix="/v1/admin/drift", tags=["admin"], dependencies=[Depends(require_admin)],
                         route_class=KeyFirstRoute)


class Selection(BaseModel):
    ids: list[str] = []
    all: bool = False
    classifier: str | None = None


class Done(BaseModel):
    ids: list[str]


def _select(dlq: DeadLetters, sel: Selection) -> list[DeadLetterEntry]:
    try:
        return dlq.select(sel.ids, sel.all, sel.classifier)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(422, f"{exc} (all=true)") from exc


@router.get("", response_model=list[DeadLetterGroup])
async def list_dead_letters(classifier: str | None = None, closed: bool = False,
                            services: Services = Depends(get_services)) -> list[DeadLetterGroup]:
    dlq = DeadLetters(services.settings, services.store)
    return await run_in_threadpool(dlq.groups, classifier=classifier, include_closed=closed)


@router.get("/{entry_id}", response_model=DeadLetterEntry, responses={404: {"description": "no such dead letter"}})
async def show_dead_letter(entry_id: str, services: Services = Depends(get_services)) -> DeadLetterEntry:
    entry = await run_in_threadpool(DeadLetters(services.settings, services.store).get, entry_id)
    if entry is None:
        raise HTTPException(404, f"no dead letter {entry_id}")
    return entry


@router.post("/replay", response_model=Done, responses={404: {"description": "no such dead letter"},
                                                        409: {"description": "a dead letter cannot be replayed"}})
async def replay_dead_letters(sel: Selection, services: Services = Depends(get_services)) -> Done:
    dlq = DeadLetters(services.settings, services.store)
    try:
        return Done(ids=await run_in_threadpool(lambda: dlq.replay(_select(dlq, sel))))
    except NotReplayable as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/purge", response_model=Done, responses={404: {"description": "no such dead letter"}})
async def purge_dead_letters(sel: Selection, services: Services = Depends(get_services)) -> Done:
    dlq = DeadLetters(services.settings, services.store)
    return Done(ids=await run_in_threadpool(lambda: dlq.purge(_select(dlq, sel))))


@drift_router.get("/{classifier}", response_model=DriftReport, responses={404: {"description": "no such classifier"}})
async def drift(classifier: str, services: Services = Depends(get_services)) -> DriftReport:
    """Scores the champion's recent predictions; also sets ``sift_drift_psi`` on this process's /metrics."""
    try:
        return await run_in_threadpool(Drift(services.settings, services.store).check, classifier, alert=False)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
