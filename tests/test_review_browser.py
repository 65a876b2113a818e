"""Browser test: a reviewer uses the real Label Studio UI in headless Chromium.

Logs in, opens the classifier's queue, sees the model's guess pre-selected on the first task,
picks another label, submits; the corrected label reaches the reviewed dataset in S3 through the
webhook (no reconciliation pass runs here).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.bus_helpers import wait_until
from tests.review_fixtures import ReviewEnv, review_env_fixture  # noqa: F401

pytestmark = [pytest.mark.labelstudio, pytest.mark.browser, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser_page(tmp_path: Path):  # noqa: ANN201
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            page.screenshot(path=str(tmp_path / "last.png"))
            context.close()


def test_reviewer_corrects_model_guess_in_browser(review_env: ReviewEnv, browser_page, tmp_path: Path) -> None:
    env, page = review_env, browser_page
    env.queue().submit(env.request("The striker scored twice in the second half", predicted_label="tech",
                                   confidence=0.41, comment="this is about football"))
    [task] = env.tasks()

    started = time.monotonic()
    page.goto(f"{env.ls.url}/user/login/")
    page.fill("input[name=email]", env.ls.username)
    page.fill("input[name=password]", env.ls.password)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)

    # the project's queue: Label All Tasks opens the first open task in the labeling stream
    page.goto(f"{env.ls.url}/projects/{env.project_id}/data?labeling=1")
    page.get_by_text("The striker scored twice in the second half").wait_for()
    page.get_by_text("Model's guess: tech (41% confident)").wait_for()
    page.get_by_text("User comment: this is about football").wait_for()
    page.screenshot(path=str(tmp_path / "task.png"))

    tech = page.get_by_role("checkbox", name="tech")
    sports = page.get_by_role("checkbox", name="sports")
    assert tech.is_checked(), "the model's guess should be pre-selected"
    assert not sports.is_checked()
    sports.click()
    assert sports.is_checked() and not tech.is_checked()
    page.get_by_role("button", name="Submit current annotation").click()
    page.get_by_text("Annotation saved successfully", exact=True).wait_for()
    print(f"browser review took {time.monotonic() - started:.1f}s")

    assert wait_until(lambda: len(env.reviewed()) == 1, 30, 0.3), "corrected label not in the dataset"
    [rec] = env.reviewed()
    assert rec.text == "The striker scored twice in the second half"
    assert rec.label == "sports" and rec.predicted_label == "tech"
    assert rec.reviewer == env.ls.username and rec.review_task_id == task["id"]
    annotation = env.projects.client.annotations.list(id=task["id"])[0]
    assert annotation.result[0].get("origin") == "prediction-changed"
