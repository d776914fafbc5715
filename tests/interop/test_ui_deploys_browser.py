"""The page's environments, queue, failures, audit trail and rollback, in Chromium.

The app runs in this process under uvicorn with a deploy worker thread, on
the sample control repository, with authentication on: the page first
shows the gates and asks for a token for the rest, then, with a token that
may deploy ``production`` only, shows each environment's commit, branch
and deployer, a failed deploy's error, follows new deploys and gate
changes without a reload, filters the audit trail, opens a commit's diff
and rolls ``production`` back. Set
``GITSTATE_UI_DEPLOYS_SCREENSHOT=docs/ui-deploys.png`` to refresh the
screenshot kept in the docs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gitstate.cli.sample import SampleRepos
from gitstate.config import Config
from gitstate.web.app import create_app
from tests.support.browser import CHROMIUM, SKIP, chrome, until
from tests.support.deploy_harness import CM, Running
from tests.support.filesync import push
from tests.support.helpers import serve_app

pytestmark = SKIP

if CHROMIUM.exists():
    from selenium.webdriver.common.by import By


class Site:
    """The served app, its tokens, and calls to its API."""

    def __init__(self, url: str, running: Running) -> None:
        self.url = url
        self.running = running
        tokens = running.services.tokens
        self.admin = tokens.issue("root", permissions=["admin"], actor="test").token
        self.deployer = tokens.issue("dee", permissions=["deploy:production"], actor="test").token

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"X-Authentication": token or self.admin}
        answer = requests.request(method, self.url + path, json=body, headers=headers, timeout=90)
        answer.raise_for_status()
        return answer.json()

    def deploy(self, *environments: str) -> list[dict[str, Any]]:
        return self.api("POST", f"{CM}/deploys", {"environments": list(environments), "wait": True})


@pytest.fixture
def site(tmp_path: Path, sample: SampleRepos) -> Iterator[Site]:
    config = Config.from_mapping(
        {
            "datadir": str(tmp_path / "data"),
            "state": {"fsync": False},
            "auth": {"enabled": True},
            "sources": {"puppet": {"remote": sample.control_url, "invalid_branches": "correct"}},
            "deploy": {"timeouts": {"wait": 60}, "local_module_sources": [str(sample.modules)]},
            "file_sync": {"token": "s3cret"},
        }
    )
    with Running(config) as running, serve_app(create_app(services=running.services)) as url:
        yield Site(url, running)


@pytest.fixture
def browser() -> Iterator[Any]:
    with chrome("1280,1400") as driver:
        yield driver


def row(driver: Any, environment: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'tr[data-environment="{environment}"]')


def cell_text(driver: Any, environment: str, selector: str) -> str:
    return str(row(driver, environment).find_element(By.CSS_SELECTOR, selector).text)


def audit_subjects(driver: Any) -> list[str]:
    return [item.text for item in driver.find_elements(By.CSS_SELECTOR, "#audit li .subject")]


def test_environments_failures_audit_and_rollback(
    browser: Any, site: Site, sample: SampleRepos, tmp_path: Path
) -> None:
    site.api("POST", "/api/gates/shop/cart", {"environments": ["develop", "live"]})
    (first,) = site.deploy("production")
    (dev,) = site.deploy("development")
    (failed,) = site.deploy("nosuchenv")
    assert (first["status"], dev["status"], failed["status"]) == ("complete", "complete", "failed")

    # A file-sync client that has what was deployed so far.
    requests.post(
        f"{site.url}/file-sync/v1/check-ins",
        json={"name": "web1", "code_commit": dev["file-sync"]["code-commit"]},
        headers={"X-Authentication": "s3cret"},
        timeout=30,
    ).raise_for_status()

    # Without a token: gates show, deploys ask for one.
    browser.get(f"{site.url}/?tab=shop")
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "td[data-gate]"), "the gates")
    note = until(
        browser, lambda: browser.find_element(By.CSS_SELECTOR, "#code-note.needs-token"), ""
    )
    assert "need a token" in note.text
    assert not browser.find_elements(By.CSS_SELECTOR, "tr[data-environment]")

    # With a token that may deploy production only.
    browser.find_element(By.ID, "token").send_keys(site.deployer)
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    until(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-environment]"), "rows")
    browser.execute_script("window.__sameDocument = 'yes';")
    signature = first["deploy-signature"]
    assert cell_text(browser, "production", ".signature") == signature[:8]
    assert cell_text(browser, "production", ".branch") == "production"
    assert cell_text(browser, "production", ".by") == "root"
    assert "(dee)" in browser.find_element(By.ID, "token-state").text
    production_button = row(browser, "production").find_element(By.CSS_SELECTOR, "button.rollback")
    development_button = row(browser, "development").find_element(
        By.CSS_SELECTOR, "button.rollback"
    )
    assert production_button.is_enabled()
    assert not development_button.is_enabled()
    assert "deploy:development" in development_button.get_attribute("title")
    assert cell_text(browser, "production", ".clients") == "web1: synced"
    assert cell_text(browser, "nosuchenv", ".branch") == "—"
    assert "cannot be found in any source" in cell_text(browser, "nosuchenv", ".now")
    failures = until(
        browser,
        lambda: browser.find_element(By.CSS_SELECTOR, f'#failed li[data-deploy="{failed["id"]}"]'),
        "the failed deploy",
    )
    assert "cannot be found in any source" in failures.text

    # A new deploy and a gate change show up without a reload.
    second = push(sample, tmp_path / "work", "production", {"data/common.yaml": "v: 2\n"})
    site.deploy("production")
    until(
        browser,
        lambda: cell_text(browser, "production", ".signature") == second[:8],
        "the new deploy",
    )
    assert cell_text(browser, "production", ".clients") == "web1: behind"
    site.api("PUT", "/api/gates/shop/cart/live", {"state": "closed", "message": "freeze"})
    until(browser, lambda: "root closes shop/cart/live" in audit_subjects(browser)[0], "the close")
    assert browser.execute_script("return window.__sameDocument;") == "yes"

    # Filter the audit trail; open a commit's changes.
    form = browser.find_element(By.ID, "audit-filter")
    form.find_element(By.NAME, "gate").send_keys("shop/cart/live")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(browser, lambda: len(audit_subjects(browser)) == 2, "the gate's two entries")
    tags = browser.find_elements(By.CSS_SELECTOR, "#audit li .tags")
    assert all("gate shop/cart/live" in tag.text for tag in tags)
    browser.find_element(By.CSS_SELECTOR, "#audit li button.diff-toggle").click()
    diff = until(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#audit pre.diff"), "diff")
    assert "+" in diff.text and "state: closed" in diff.text
    form.find_element(By.NAME, "gate").clear()
    form.find_element(By.NAME, "environment").send_keys("production")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(
        browser,
        lambda: (
            (tags := browser.find_elements(By.CSS_SELECTOR, "#audit li .tags"))
            and all("env production" in tag.text for tag in tags)
        ),
        "production's entries",
    )

    # Roll production back from the page.
    row(browser, "production").find_element(By.CSS_SELECTOR, "button.rollback").click()
    browser.switch_to.alert.accept()
    until(
        browser,
        lambda: cell_text(browser, "production", ".signature") == signature[:8],
        "the rolled back version",
    )
    assert "(rollback)" in cell_text(browser, "production", ".by")
    assert cell_text(browser, "production", ".by").startswith("dee")
    until(
        browser,
        lambda: any("dee rolled back production" in s for s in audit_subjects(browser)),
        "the rollback in the audit trail",
    )
    status = site.api("GET", f"{CM}/deploys/status")
    deployed = {d["environment"]: d for d in status["file-sync-storage-status"]["deployed"]}
    assert deployed["production"]["deploy-signature"] == signature

    form.find_element(By.CSS_SELECTOR, "button[type=reset]").click()
    until(browser, lambda: len(audit_subjects(browser)) > 5, "the whole trail again")
    browser.execute_script("document.getElementById('code').scrollIntoView();")
    target = Path(os.environ.get("GITSTATE_UI_DEPLOYS_SCREENSHOT") or tmp_path / "ui-deploys.png")
    assert browser.save_screenshot(str(target))
    assert target.stat().st_size > 0
