"""The web view in a real browser: Debian's headless Chromium, driven by chromedriver through selenium.

The app is served by uvicorn on loopback with the records of ``test_ui.py``'s world
(a landed run and a failed one, hostile text everywhere). The browser signs in
through the form, reads the list and the task pages, and must show the failed
check's evidence and every hostile name or message as text: no alert, no element
the text tried to make. With ``TASKBOX_UPDATE_SCREENSHOTS=1`` the test writes
``docs/ui-tasks.png`` and ``docs/ui-task.png``. Without Chromium it skips, unless
``TASKBOX_REQUIRE_BROWSER=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import RepoFactory
from tests.controller.api.conftest import REPO_ROOT, TOKEN_ALL
from tests.controller.api.test_ui import (
    HOSTILE_EVENT,
    HOSTILE_EVIDENCE,
    HOSTILE_NAME,
    UiWorld,
    make_ui_world,
)

pytestmark = pytest.mark.browser

DOCS = REPO_ROOT / "docs"
#: Where Debian puts the browser and its driver (package chromium, chromium-driver).
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
DRIVER_FALLBACK = Path("/usr/lib/chromium/chromedriver")
WAIT_SECONDS = 20


def _find(names: tuple[str, ...], fallback: Path | None = None) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return str(fallback) if fallback is not None and fallback.is_file() else None


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium through chromedriver (both from the system, nothing downloaded)."""
    binary, driver_path = _find(BROWSERS), _find(DRIVERS, DRIVER_FALLBACK)
    if binary is None or driver_path is None:
        message = "Chromium and chromedriver are needed (scripts/ensure-chromium installs them)"
        if os.environ.get("TASKBOX_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # Chromium's own sandbox cannot start as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def world(tmp_path: Path, make_repo: RepoFactory) -> Iterator[UiWorld]:
    """The served web view with a landed run, a failed run and a task of another repository."""
    # Screenshots show a timeline with durations: each stage then takes a moment.
    pause = 0.4 if os.environ.get("TASKBOX_UPDATE_SCREENSHOTS") == "1" else 0.0
    made = make_ui_world(tmp_path, make_repo, pause)
    yield made
    made.api.stop()


def _no_alert(driver: webdriver.Chrome) -> None:
    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text


def _nothing_injected(driver: webdriver.Chrome) -> None:
    """No script ran and no element the hostile text spelled exists."""
    _no_alert(driver)
    for selector in ("script", "img", "iframe", "#injected"):
        assert driver.find_elements(By.CSS_SELECTOR, selector) == [], selector


def _csp_quiet(driver: webdriver.Chrome) -> None:
    """The browser refused nothing: the stylesheet loads under the page's CSP, nothing else is asked for."""
    log = driver.get_log("browser")  # type: ignore[no-untyped-call]  # selenium leaves it untyped
    errors = [e for e in log if e.get("level") == "SEVERE"]
    assert errors == [], errors


def _screenshot(driver: webdriver.Chrome, name: str) -> None:
    """Write docs/<name> when asked to (TASKBOX_UPDATE_SCREENSHOTS=1), the whole page high."""
    if os.environ.get("TASKBOX_UPDATE_SCREENSHOTS") != "1":
        return
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 40, 4000))
    driver.execute_script("window.scrollTo(0, 0)")
    DOCS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(DOCS / name))
    driver.set_window_size(1280, 900)


def test_a_person_signs_in_reads_the_list_and_a_failed_task(
    browser: webdriver.Chrome, world: UiWorld
) -> None:
    """Signed in through the form, the list filters, the failed task shows its evidence, and hostile text is only text."""
    wait = WebDriverWait(browser, WAIT_SECONDS)
    base = world.api.url
    browser.get(f"{base}/ui/tasks")
    wait.until(lambda d: d.current_url.endswith("/ui/sign-in"))
    assert "token" not in browser.current_url.lower().replace("/ui/sign-in", "")
    browser.find_element(By.ID, "token").send_keys(TOKEN_ALL)
    browser.find_element(By.CSS_SELECTOR, "form.signin button").click()
    wait.until(lambda d: d.current_url == f"{base}/ui/tasks")
    assert TOKEN_ALL not in browser.current_url

    # The list: every task, styled by the stylesheet (the CSP let it load), then filtered.
    keys = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.tasks td:first-child a")]
    assert keys == ["OK-101", "BE-102", "BE-201"]
    header = browser.find_element(By.CSS_SELECTOR, "header.bar")
    assert header.value_of_css_property("background-color") == "rgba(36, 41, 47, 1)"
    _csp_quiet(browser)
    _screenshot(browser, "ui-tasks.png")
    Select(browser.find_element(By.NAME, "status")).select_by_value("succeeded")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait.until(lambda d: "status=succeeded" in d.current_url)
    keys = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.tasks td:first-child a")]
    assert keys == ["OK-101"]

    # The failed task: its failing checks and their evidence are visible as text.
    browser.get(f"{base}/ui/tasks?status=failed&repository=alpha")
    browser.find_element(By.LINK_TEXT, "BE-102").click()
    wait.until(lambda d: d.current_url.endswith(f"/ui/tasks/{world.bad}"))
    failed = browser.find_elements(By.CSS_SELECTOR, "table.checks tr.fail")
    assert len(failed) == 2
    assert all(row.is_displayed() for row in failed)
    evidence = failed[1].find_element(By.CSS_SELECTOR, "ul.evidence li")
    assert evidence.is_displayed()
    assert evidence.text == HOSTILE_EVIDENCE
    assert "FAIL" in failed[0].text
    assert "61.50% < 80.00% line coverage of owned source" in failed[0].text

    # Hostile names and messages are text on the page, and made nothing.
    body = browser.find_element(By.TAG_NAME, "body").text
    assert HOSTILE_EVENT in body
    assert HOSTILE_NAME in body
    _nothing_injected(browser)

    # The transcript is folded; opening a turn shows the model's text with its bidi override escaped.
    turns = browser.find_elements(By.CSS_SELECTOR, "details.turn")
    assert len(turns) == 2
    assert not turns[1].find_element(By.CSS_SELECTOR, "pre").is_displayed()
    turns[1].find_element(By.TAG_NAME, "summary").click()
    shown = turns[1].find_element(By.CSS_SELECTOR, "details.text pre")
    assert shown.is_displayed()
    assert shown.text.startswith("Done \\u202eevil\\u202c and \\x1b[31mred")
    assert "<iframe src=//x></iframe>" in shown.text
    _nothing_injected(browser)
    _csp_quiet(browser)
    turns[1].find_element(By.TAG_NAME, "summary").click()
    _screenshot(browser, "ui-task.png")


def test_the_landed_task_shows_its_diff_with_the_hostile_file_name_as_text(
    browser: webdriver.Chrome, world: UiWorld
) -> None:
    """The landed run's page shows the commit's diff; the file called like an <img> tag is a file name, not an image."""
    wait = WebDriverWait(browser, WAIT_SECONDS)
    base = world.api.url
    browser.get(f"{base}/ui/sign-in")
    browser.find_element(By.ID, "token").send_keys(TOKEN_ALL)
    browser.find_element(By.CSS_SELECTOR, "form.signin button").click()
    wait.until(lambda d: d.current_url == f"{base}/ui/tasks")
    browser.get(f"{base}/ui/tasks/{world.ok}")
    files = browser.find_elements(By.CSS_SELECTOR, "#diff details.file summary")
    assert any(f"b/{HOSTILE_NAME}" in f.text for f in files)
    added = browser.find_elements(By.CSS_SELECTOR, "#diff .add")
    assert "+print('<b>hi</b>')" in [a.text for a in added]
    _nothing_injected(browser)
    _csp_quiet(browser)
    # Signing out ends it: the list asks to sign in again.
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    wait.until(lambda d: d.current_url.endswith("/ui/sign-in"))
    browser.get(f"{base}/ui/tasks")
    wait.until(lambda d: d.current_url.endswith("/ui/sign-in"))
