"""Thin wrapper over ``label_studio_sdk`` 2.x: the only module of Sift that knows Label Studio's API.

Everything the review stage does to Label Studio goes through ``ReviewProjects`` so the quirks of
1.23 (see ARCHITECTURE.md) live in one place: data fields never named ``source``, the
``total_annotations > 0`` data-manager filter instead of ``only_annotated``, paged reads, webhooks
that must be project-scoped and carry our shared secret in a header.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from xml.sax.saxutils import quoteattr

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from pydantic import BaseModel

from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/v1/review/webhook"
WEBHOOK_SECRET_HEADER = "X-Sift-Webhook-Secret"
WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
FROM_NAME = "label"
TO_NAME = "text"
PAGE_SIZE = 100


class LabelStudioUnavailable(ConnectionError):
    """Label Studio could not be reached or answered 5xx: callers retry later (never a lost request)."""


class LabelStudioRejected(RuntimeError):
    """Label Studio answered 4xx: retrying the same call will not help. This module is the only one
    that reads Label Studio's errors; callers see these two types, never the SDK's."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class LabelStudioNotFound(LabelStudioRejected):
    """404: the project or task is gone (say the Label Studio database was recreated)."""


def project_title(classifier: str) -> str:
    return f"sift: {classifier}"


def label_config(labels: list[str]) -> str:
    """What a reviewer sees: the model's guess, why the text is here, the text, one choice.

    Every displayed value is a single ``$field`` (Header/Text render one variable each); the
    worker precomputes the display strings into task data. Labels are XML-escaped.
    """
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return f"""<View>
  <Header value="$guess" size="4"/>
  <Text name="{TO_NAME}" value="$text"/>
  <Header value="$context" size="6"/>
  <Header value="$comment_display" size="6"/>
  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true">
{choices}
  </Choices>
</View>"""


def choice_result(label: str) -> list[dict[str, Any]]:
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}]


class TaskSpec(BaseModel):
    """One task to import: its data and, when the model's label is a valid choice, a pre-annotation."""

    data: dict[str, Any]
    predicted_label: str | None = None
    score: float | None = None
    model_version: str | None = None


class FinishedAnnotation(BaseModel):
    """One annotation of a finished task, as both the webhook and reconciliation see it."""

    task_id: int
    annotation_id: int
    project_id: int | None = None
    data: dict[str, Any]
    label: str | None
    skipped: bool
    reviewer_id: int | None = None
    reviewer: str | None = None
    prediction_changed: bool = False
    updated_at: datetime | None = None


def _label_of(result: list[dict[str, Any]] | None) -> tuple[str | None, bool]:
    """The chosen label and whether the reviewer changed the pre-selected prediction."""
    for item in result or []:
        if item.get("from_name") == FROM_NAME and item.get("type") == "choices":
            chosen = (item.get("value") or {}).get("choices") or []
            return (chosen[0] if chosen else None), item.get("origin") == "prediction-changed"
    return None, False


def parse_annotation(task: dict[str, Any], annotation: dict[str, Any]) -> FinishedAnnotation:
    """Normalise an annotation from a webhook payload or an API read (they differ in `completed_by`)."""
    label, changed = _label_of(annotation.get("result"))
    completed_by = annotation.get("completed_by")
    reviewer_id: int | None
    reviewer: str | None = None
    if isinstance(completed_by, dict):
        reviewer_id = completed_by.get("id")
        reviewer = completed_by.get("email") or None
    else:
        reviewer_id = completed_by
    updated = annotation.get("updated_at") or annotation.get("created_at")
    skipped = bool(annotation.get("was_cancelled")) or label is None
    return FinishedAnnotation(
        task_id=int(task.get("id") or annotation["task"]),
        annotation_id=int(annotation["id"]),
        project_id=task.get("project") or annotation.get("project"),
        data=task.get("data") or {},
        label=None if skipped else label,
        skipped=skipped,
        reviewer_id=reviewer_id,
        reviewer=reviewer,
        prediction_changed=changed,
        updated_at=datetime.fromisoformat(updated.replace("Z", "+00:00")) if isinstance(updated, str) else updated,
    )


def _filters(*items: dict[str, Any], conjunction: str = "and") -> str:
    return json.dumps({"filters": {"conjunction": conjunction, "items": list(items)}})


def _f(column: str, operator: str, type_: str, value: Any) -> dict[str, Any]:
    return {"filter": f"filter:tasks:{column}", "operator": operator, "type": type_, "value": value}


OPEN_FILTER = (_f("total_annotations", "equal", "Number", 0), _f("cancelled_annotations", "equal", "Number", 0))
QUEUE_VIEW_TITLE = "To review (most informative first)"
PRIORITY_COLUMN = "tasks:data.priority"


def queue_view_data() -> dict[str, Any]:
    """The data-manager tab reviewers land on: open tasks, highest ``data.priority`` first.

    ``columnsDisplayType`` marks the column numeric: without it Label Studio orders data fields as
    text. The label stream ("Label All Tasks") serves the tab's order (sequential sampling).
    """
    return {"title": QUEUE_VIEW_TITLE, "ordering": [f"-{PRIORITY_COLUMN}"],
            "filters": {"conjunction": "and", "items": list(OPEN_FILTER)},
            "columnsDisplayType": {PRIORITY_COLUMN: "Number"}}


def task_started(task: dict[str, Any], service_user_id: int | None) -> bool:
    """A reviewer has touched the task: an answer, a draft, or an edit by someone other than Sift.

    Label Studio Community does not show another user's task lock over the API, so a task that a
    reviewer merely has open is not visible here (see ARCHITECTURE-NOTES, review window).
    """
    if (task.get("total_annotations") or 0) > 0 or (task.get("cancelled_annotations") or 0) > 0:
        return True
    if task.get("draft_exists") or task.get("drafts"):
        return True
    editors = {u.get("user_id") for u in task.get("updated_by") or [] if isinstance(u, dict)}
    return bool(editors - {None, service_user_id})


class ReviewProjects:
    """Label Studio operations of the review stage, by project id."""

    def __init__(self, url: str, token: str, timeout: float = 30.0, cooldown_s: float = 3.0) -> None:
        self.url = url.rstrip("/")
        self.client = LabelStudio(base_url=self.url, api_key=token, timeout=timeout)
        self._users: dict[int, str] = {}
        self._me: int | None = None
        self.cooldown_s = cooldown_s
        self._down_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ReviewProjects:
        return cls(settings.label_studio_url, settings.label_studio_token, timeout=settings.label_studio_timeout_s)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Map transport failures and 5xx to LabelStudioUnavailable (retryable), 4xx to
        LabelStudioRejected (404: LabelStudioNotFound).

        A short circuit breaker: after a failure, calls fail fast for ``cooldown_s`` instead of
        each paying the SDK's connection retries (seconds per call), so an outage does not slow
        the worker's intake of requests into the backlog.
        """
        if time.monotonic() < self._down_until:
            raise LabelStudioUnavailable(f"Label Studio at {self.url} is down (cooling off)")
        try:
            return fn(*args, **kwargs)
        except (httpx.TransportError, ConnectionError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.cooldown_s
            raise LabelStudioUnavailable(f"Label Studio unreachable at {self.url}: {exc}") from exc
        except ApiError as exc:
            if exc.status_code is None or exc.status_code >= 500:
                self._down_until = time.monotonic() + self.cooldown_s
                raise LabelStudioUnavailable(f"Label Studio error {exc.status_code}") from exc
            kind = LabelStudioNotFound if exc.status_code == 404 else LabelStudioRejected
            raise kind(exc.status_code, f"Label Studio answered {exc.status_code}: {exc.body}") from exc

    # ---- projects and webhooks ----------------------------------------------------------------

    def project_exists(self, project_id: int, classifier: str) -> bool:
        """True when the id names *this* classifier's project (a recreated LS database may reuse ids)."""
        try:
            project = self._call(self.client.projects.get, project_id)
        except LabelStudioNotFound:
            return False
        return project.title == project_title(classifier)

    def find_project(self, classifier: str) -> int | None:
        title = project_title(classifier)
        for project in self._call(lambda: list(self.client.projects.list(title=title))):
            if project.title == title:
                return int(project.id)
        return None

    def provision_project(self, cfg: ClassifierConfig) -> int:
        """Create (or adopt, by title) the classifier's project and make its config current."""
        config = label_config(cfg.labels)
        project_id = cfg.label_studio_project_id
        if project_id is None or not self.project_exists(project_id, cfg.name):
            project_id = self.find_project(cfg.name)
        if project_id is None:
            project = self._call(
                self.client.projects.create,
                title=project_title(cfg.name),
                description=f"Sift review queue of classifier {cfg.name}. {cfg.description}".strip(),
                label_config=config,
                show_skip_button=True,
                maximum_annotations=1,
                expert_instruction="Pick the correct label. The model's guess is pre-selected; "
                "change it if it is wrong, or skip when no label fits.",
                show_instruction=False,
            )
            return int(project.id)
        current = self._call(self.client.projects.get, project_id)
        if current.label_config != config:
            self._call(self.client.projects.update, project_id, label_config=config)
        return int(project_id)

    def ensure_webhook(self, project_id: int, url: str, secret: str) -> None:
        """One project-scoped webhook to ``url`` with the current secret (stale ones are replaced)."""
        existing = self._call(lambda: list(self.client.webhooks.list(project=str(project_id))))
        keep = False
        for hook in existing:
            if hook.project != project_id:
                continue
            same = (hook.url == url and (hook.headers or {}).get(WEBHOOK_SECRET_HEADER) == secret
                    and set(hook.actions or []) == set(WEBHOOK_ACTIONS) and hook.is_active)
            if same and not keep:
                keep = True
            elif hook.url == url or same:
                self._call(self.client.webhooks.delete, hook.id)
        if not keep:
            self._call(
                self.client.webhooks.create,
                url=url, project=project_id, send_payload=True, send_for_all_actions=False,
                headers={WEBHOOK_SECRET_HEADER: secret}, actions=WEBHOOK_ACTIONS, is_active=True,
            )

    def ensure_queue_view(self, project_id: int) -> int:
        """The best-first tab exists, is current and is the first (default) tab of the project."""
        views = [v for v in self._call(lambda: list(self.client.views.list(project=project_id)))
                 if v.project == project_id]
        want = queue_view_data()
        ours = next((v for v in views if (v.data or {}).get("title") == QUEUE_VIEW_TITLE), None)
        if ours is None:
            ours = self._call(self.client.views.create, project=project_id, data=want)
            views.append(ours)
        elif any((ours.data or {}).get(k) != want[k] for k in ("columnsDisplayType", "ordering")):
            self._call(self.client.views.update, str(ours.id), project=project_id, data=want)
        ordered = sorted(views, key=lambda v: (v.order or 0, v.id or 0))
        if ordered[0].id != ours.id:
            ids = [int(ours.id)] + [int(v.id) for v in ordered if v.id != ours.id]  # type: ignore[arg-type]
            self._call(self.client.views.update_order, ids=ids, project=project_id)
        return int(ours.id)  # type: ignore[arg-type]

    # ---- tasks --------------------------------------------------------------------------------

    def create_tasks(self, project_id: int, specs: list[TaskSpec], labels: list[str]) -> list[int]:
        """Import tasks in one request, each with the model's guess as a prediction; ids in order."""
        request = []
        for spec in specs:
            task: dict[str, Any] = {"data": spec.data}
            if spec.predicted_label in labels:
                task["predictions"] = [{
                    "model_version": spec.model_version or "unknown",
                    "score": spec.score if spec.score is not None else 0.0,
                    "result": choice_result(spec.predicted_label),  # type: ignore[arg-type]
                }]
            request.append(task)
        resp = self._call(self.client.projects.import_tasks, project_id, request=request, return_task_ids=True)
        ids = list(resp.task_ids or [])
        if len(ids) != len(specs):
            raise LabelStudioUnavailable(f"import returned {len(ids)} task ids for {len(specs)} tasks")
        return ids

    def update_task_data(self, task_id: int, data: dict[str, Any]) -> None:
        self._call(self.client.tasks.update, str(task_id), data=data)

    def get_task(self, task_id: int) -> dict[str, Any] | None:
        try:
            task = self._call(self.client.tasks.get, str(task_id))
        except LabelStudioNotFound:
            return None
        return task.model_dump() if hasattr(task, "model_dump") else dict(task)

    def _pages(self, project_id: int, query: str, fields: str = "all", page_size: int = PAGE_SIZE,
               ordering: list[str] | None = None) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(total, tasks) per page: the data manager's own pagination, one request per page."""
        if ordering:
            q = json.loads(query)
            q["ordering"] = ordering
            query = json.dumps(q)
        page = 1
        while True:
            try:
                resp = self._call(self._raw_list, project_id, query, fields, page, page_size)
            except LabelStudioNotFound:  # past the last page
                return
            tasks = resp.get("tasks") or []
            yield int(resp.get("total") or 0), tasks
            if len(tasks) < page_size or page * page_size >= int(resp.get("total") or 0):
                return
            page += 1

    def _raw_list(self, project_id: int, query: str, fields: str, page: int, page_size: int) -> dict[str, Any]:
        pager = self.client.tasks.list(project=project_id, query=query, fields=fields, page=page,
                                       page_size=page_size)
        resp = pager.response
        return {"total": resp.total, "tasks": [t.model_dump() for t in resp.tasks]}

    def count_open(self, project_id: int) -> int:
        """Tasks nobody has answered or skipped yet: the current window."""
        for total, _ in self._pages(project_id, _filters(*OPEN_FILTER), fields="task_only", page_size=1):
            return total
        return 0

    def open_tasks(self, project_id: int, limit: int = 1, oldest_first: bool = True) -> list[dict[str, Any]]:
        order = ["tasks:id"] if oldest_first else ["-tasks:id"]
        for _, tasks in self._pages(project_id, _filters(*OPEN_FILTER), fields="task_only", page_size=limit,
                                    ordering=order):
            return tasks
        return []

    def service_user_id(self) -> int | None:
        """The user Sift acts as (its own task edits do not count as a reviewer's)."""
        if self._me is None:
            self._me = getattr(self._call(self.client.users.whoami), "id", None)
        return self._me

    def open_task_data(self, project_id: int) -> list[dict[str, Any]]:
        """Every open task (id and data), page by page: the texts now in the window."""
        out: list[dict[str, Any]] = []
        for _, tasks in self._pages(project_id, _filters(*OPEN_FILTER), fields="task_only"):
            out.extend({"id": t["id"], "data": t.get("data") or {}} for t in tasks)
        return out

    def displaceable(self, project_id: int, below: float) -> list[dict[str, Any]]:
        """Open tasks with ``data.priority`` below ``below`` that no reviewer has started, lowest first.

        Label Studio filters on the numeric value server-side; started tasks (draft, edit) are
        dropped here because the data manager cannot filter on drafts.
        """
        me = self.service_user_id()
        query = _filters(*OPEN_FILTER, _f("data.priority", "less", "Number", below))
        out: list[dict[str, Any]] = []
        for _, tasks in self._pages(project_id, query, fields="all"):
            out.extend(t for t in tasks if not task_started(t, me))
        return sorted(out, key=lambda t: (float((t.get("data") or {}).get("priority") or 0.0), -int(t["id"])))

    def delete_task(self, task_id: int) -> None:
        """Delete a task; one that is already gone is fine (the caller's intent holds)."""
        with contextlib.suppress(LabelStudioNotFound):
            self._call(self.client.tasks.delete, str(task_id))

    def find_by_data(self, project_id: int, field: str, value: str) -> list[dict[str, Any]]:
        """Tasks whose data[field] equals value (used to adopt a task whose import we did not record)."""
        out: list[dict[str, Any]] = []
        for _, tasks in self._pages(project_id, _filters(_f(f"data.{field}", "equal", "String", value)),
                                    fields="task_only"):
            out.extend(t for t in tasks if str((t.get("data") or {}).get(field)) == value)
        return out

    def finished_tasks(self, project_id: int, updated_since: datetime | None = None
                       ) -> Iterator[dict[str, Any]]:
        """Tasks with at least one answer (submitted or skipped), with annotations, page by page."""
        done = _f("total_annotations", "greater", "Number", 0), _f("cancelled_annotations", "greater", "Number", 0)
        query = {"filters": {"conjunction": "or", "items": list(done)}}
        if updated_since is not None:
            # the data manager cannot nest and/or: filter by time on the server, by answers here
            query = {"filters": {"conjunction": "and", "items": [
                _f("updated_at", "greater", "Datetime", updated_since.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))]}}
        for _, tasks in self._pages(project_id, json.dumps(query), fields="all", ordering=["tasks:id"]):
            for t in tasks:
                if (t.get("total_annotations") or 0) > 0 or (t.get("cancelled_annotations") or 0) > 0:
                    yield t

    def annotations(self, task: dict[str, Any]) -> list[FinishedAnnotation]:
        """The task's annotations (from the list payload, else fetched), reviewers resolved to emails."""
        raw = task.get("annotations")
        if raw is None:
            raw = [a.model_dump() for a in self._call(self.client.annotations.list, int(task["id"]))]
        out = []
        for a in raw:
            if a.get("was_cancelled") is None and a.get("result") is None:
                continue
            ann = parse_annotation(task, a)
            if ann.reviewer is None and ann.reviewer_id is not None:
                ann.reviewer = self.user_email(ann.reviewer_id)
            out.append(ann)
        return out

    def user_email(self, user_id: int) -> str:
        """Reviewer id -> email, cached (user ids do not change owners)."""
        if user_id not in self._users:
            try:
                user = self._call(self.client.users.get, user_id)
                self._users[user_id] = user.email or f"user-{user_id}"
            except LabelStudioRejected:
                return f"user-{user_id}"
        return self._users[user_id]


def webhook_secret_of(settings: Settings, cfg: ClassifierConfig | None) -> str:
    """The secret this classifier's webhooks carry: its own, else the deployment-wide one."""
    return (cfg.webhook_secret if cfg is not None else None) or settings.webhook_secret


def rotate_webhook_secret(settings: Settings, tenants: TenantStore, name: str,
                          projects: ReviewProjects | None = None) -> bool:
    """Give the classifier a fresh webhook secret and re-register its webhook with it.

    The new secret is saved first: until Label Studio has it, webhooks arrive with the old one and
    are refused (403); the reconciliation pass collects those reviews. Returns False when Label
    Studio could not be updated now (the review worker's ``ensure_project`` retries it).
    """
    cfg = tenants.require(name)
    cfg.webhook_secret = secrets.token_urlsafe(32)
    tenants.save(cfg)
    if cfg.label_studio_project_id is None:
        return True
    try:
        ensure_project(settings, tenants, cfg, projects)
    except LabelStudioUnavailable:
        log.warning("webhook secret of %s rotated; Label Studio not updated yet", name)
        return False
    return True


def ensure_project(settings: Settings, tenants: TenantStore, cfg: ClassifierConfig,
                   projects: ReviewProjects | None = None) -> int:
    """Provision the classifier's review project, webhook and best-first tab; store the id in its config.

    Idempotent: called at onboarding and lazily by the worker (Label Studio may have been down
    at onboarding, or its database recreated).
    """
    projects = projects or ReviewProjects.from_settings(settings)
    project_id = projects.provision_project(cfg)
    projects.ensure_webhook(project_id, settings.public_api_url.rstrip("/") + WEBHOOK_PATH,
                            webhook_secret_of(settings, cfg))
    projects.ensure_queue_view(project_id)
    if cfg.label_studio_project_id != project_id:
        fresh = tenants.get(cfg.name) or cfg
        fresh.label_studio_project_id = project_id
        tenants.save(fresh)
        cfg.label_studio_project_id = project_id
    return project_id
