"""The web page driven in Debian's headless Chromium against a real server.

A ``gitstate web`` subprocess serves the page; Selenium drives Chromium
through Debian's chromedriver (both given by path, so Selenium Manager never
downloads anything). Set ``GITSTATE_UI_SCREENSHOT=docs/ui.png`` to write the
screenshot kept in the docs; otherwise it goes to a temporary folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.browser import CHROMIUM, SKIP, chrome, until
from tests.support.helpers import free_port, wait_for_http

pytestmark = SKIP

if CHROMIUM.exists():
    from selenium.webdriver.common.by import By


class Server:
    """A ``gitstate web`` subprocess on a free port."""

    def __init__(self, root: Path, auth: dict[str, Any] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "gitstate.yaml"
        lines = [
            f"datadir: {root / 'data'}",
            f"listen: 127.0.0.1:{self.port}",
            "workers: 1",
            "threads: 4",
            "state: {fsync: false}",
        ]
        lines.append("auth: {enabled: true}" if auth else "auth: {enabled: false}")
        self.config.write_text("\n".join(lines) + "\n")
        self.admin: str | None = None
        self.log = (root / "server.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gitstate", "web", "--config", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_http(f"{self.url}/internal/health")

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"X-Authentication": token} if token else {}
        answer = requests.request(method, self.url + path, json=body, headers=headers, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def token(self, user: str, *permissions: str) -> str:
        args = [sys.executable, "-m", "gitstate", "token", "create", "--user", user]
        for permission in permissions:
            args += ["--permission", permission]
        done = subprocess.run(
            [*args, "--config", str(self.config)], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    def stop(self) -> None:
        # SIGINT is gunicorn's quick shutdown: no waiting for open long polls.
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def leave(driver: Any, server: Server) -> None:
    """Close the page and end its open long poll, so the server stops at once.

    gunicorn lets running requests finish when it stops; a commit answers
    the page's pending ``/api/watch`` now instead of after its timeout.
    """
    driver.get("about:blank")
    server.api("POST", "/api/gates/zz-teardown/end", {"environments": ["x"]}, token=server.admin)


@pytest.fixture
def server(tmp_path: Path, browser: Any) -> Iterator[Server]:
    running = Server(tmp_path)
    yield running
    try:
        leave(browser, running)
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chrome() as driver:
        yield driver


def cell(driver: Any, gate: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'td[data-gate="{gate}"]')


def click(driver: Any, gate: str, selector: str) -> None:
    """Click a control of a gate's cell, finding it again if the page redrew it."""

    def attempt() -> bool:
        cell(driver, gate).find_element(By.CSS_SELECTOR, selector).click()
        return True

    until(driver, attempt, f"{selector} of {gate}")


def text(driver: Any, gate: str, selector: str, attribute: str | None = None) -> str:
    """Read a control's text (or attribute) in a gate's cell, over redraws."""

    def attempt() -> tuple[str]:
        found = cell(driver, gate).find_element(By.CSS_SELECTOR, selector)
        return ((found.get_attribute(attribute) if attribute else found.text) or "",)

    return str(until(driver, attempt, f"{selector} of {gate}")[0])


def shown_state(driver: Any, gate: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'td[data-gate="{gate}"] .state')
    return found[0].get_attribute("data-state") if found else None


def open_page(driver: Any, server: Server, tab: str = "shop") -> None:
    driver.get(f"{server.url}/?tab={tab}")
    until(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "td[data-gate]"), "any gate")
    until(
        driver,
        lambda: driver.find_element(By.ID, "live").text == "live",
        "the live indicator",
    )


def test_toggle_in_the_page_closes_and_reopens_the_gate(browser: Any, server: Server) -> None:
    server.api("POST", "/api/gates/shop/cart", {"environments": ["develop", "live"]})
    open_page(browser, server)
    assert shown_state(browser, "shop/cart/live") == "open"

    click(browser, "shop/cart/live", "button.toggle")
    until(browser, lambda: shown_state(browser, "shop/cart/live") == "closed", "live closed")
    gate = server.api("GET", "/api/gates/shop/cart/live")
    assert gate["state"] == "closed"
    assert "manual" in text(browser, "shop/cart/live", ".why")
    assert shown_state(browser, "shop/cart/develop") == "open"

    click(browser, "shop/cart/live", "button.toggle")
    until(browser, lambda: shown_state(browser, "shop/cart/live") == "open", "live reopened")
    assert server.api("GET", "/api/gates/shop/cart/live")["state"] == "open"


def test_changes_through_the_api_show_up_without_a_reload(browser: Any, server: Server) -> None:
    server.api("POST", "/api/gates/shop/cart", {"environments": ["develop", "live"]})
    open_page(browser, server)
    browser.execute_script("window.__sameDocument = 'yes';")

    server.api("PUT", "/api/gates/shop/cart/live", {"state": "closed", "message": "<b>freeze</b>"})
    until(browser, lambda: shown_state(browser, "shop/cart/live") == "closed", "the API's close")
    message = text(browser, "shop/cart/live", "textarea.message", "value")
    assert message == "<b>freeze</b>"  # text, never markup

    taken = server.api("PUT", "/api/gates", {"gates": {"shop": {"cart": "develop"}}})
    ticket = taken["ticket"]["id"]
    until(
        browser,
        lambda: cell(browser, "shop/cart/develop").find_elements(
            By.CSS_SELECTOR, f'li[data-ticket="{ticket}"]'
        ),
        "the new ticket",
    )
    assert "ticket" in text(browser, "shop/cart/develop", ".why")

    server.api("POST", "/api/gates/infra/dns", {"environments": ["live"]})
    until(
        browser,
        lambda: browser.find_elements(By.CSS_SELECTOR, 'button.tab[data-group="infra"]'),
        "the new group's tab",
    )
    assert browser.execute_script("return window.__sameDocument;") == "yes"

    # The ticket's delete control releases it through the API.
    click(browser, "shop/cart/develop", f'li[data-ticket="{ticket}"] button.delete')
    until(browser, lambda: shown_state(browser, "shop/cart/develop") == "open", "the release")
    assert server.api("GET", "/api/gates/shop/cart/develop")["queue"] == []


def test_new_gates_and_history_from_the_page(browser: Any, server: Server) -> None:
    server.api("POST", "/api/gates/shop/cart", {"environments": ["live"]})
    open_page(browser, server)
    browser.find_element(By.CSS_SELECTOR, "#new-gate-panel summary").click()
    form = browser.find_element(By.ID, "new-gate")
    form.find_element(By.NAME, "group").send_keys("infra")
    form.find_element(By.NAME, "service").send_keys("dns")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(browser, lambda: shown_state(browser, "infra/dns/live") == "open", "the new gates")
    assert server.api("GET", "/api/gates/infra/dns")["environments"].keys() == {"develop", "live"}

    server.api("PUT", "/api/gates/infra/dns/live", {"state": "closed"})
    until(browser, lambda: shown_state(browser, "infra/dns/live") == "closed", "the close")
    click(browser, "infra/dns/live", "button.history-toggle")
    until(
        browser,
        lambda: (
            len(cell(browser, "infra/dns/live").find_elements(By.CSS_SELECTOR, "ol.history li"))
            == 2
        ),
        "two history entries",
    )
    subjects = text(browser, "infra/dns/live", "ol.history")
    assert "closes infra/dns/live" in subjects
    assert "creates gates infra/dns" in subjects


def test_tokens_in_the_page(browser: Any, tmp_path: Path) -> None:
    server = Server(tmp_path, auth={"enabled": True})
    try:
        admin = server.admin = server.token("admin", "admin")
        server.api("POST", "/api/gates/shop/cart", {"environments": ["live"]}, token=admin)
        open_page(browser, server)

        click(browser, "shop/cart/live", "button.toggle")
        alert = until(
            browser,
            lambda: browser.find_element(By.CSS_SELECTOR, "#alerts .alert.status-401"),
            "the 401 alert",
        )
        assert "401 Unauthorized" in alert.text
        assert "Route requires authentication" in alert.text
        assert server.api("GET", "/api/gates/shop/cart/live")["state"] == "open"

        browser.find_element(By.ID, "token").send_keys(admin)
        browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        until(browser, lambda: not browser.find_elements(By.CSS_SELECTOR, "#alerts .alert"), "")
        click(browser, "shop/cart/live", "button.toggle")
        until(browser, lambda: shown_state(browser, "shop/cart/live") == "closed", "the close")
        assert server.api("GET", "/api/gates/shop/cart/live")["state"] == "closed"
        history = server.api("GET", "/api/gates/shop/cart/live/history")["history"]
        assert history[0]["actor"] == "admin"
        assert not browser.find_elements(By.CSS_SELECTOR, "#alerts .alert")
        stored = browser.execute_script("return localStorage.getItem('gitstate.token');")
        assert stored == admin
    finally:
        try:
            leave(browser, server)
        finally:
            server.stop()


def test_screenshot(browser: Any, server: Server, tmp_path: Path) -> None:
    api = server.api
    api("POST", "/api/gates/shop/cart", {"environments": ["develop", "staging", "live"]})
    api("POST", "/api/gates/shop/checkout", {"environments": ["develop", "staging", "live"]})
    api("POST", "/api/gates/shop/search", {"environments": ["develop", "live"]})
    api("POST", "/api/gates/infra/dns", {"environments": ["develop", "live"]})
    api("PUT", "/api/gates/shop/cart/live", {"state": "closed", "message": "Release freeze 4.2"})
    api("PUT", "/api/gates/shop/search/develop", {"message": "reindexing until noon"})
    api(
        "PUT",
        "/api/gates",
        {
            "gates": {"shop": {"checkout": ["staging", "live"]}},
            "link": "https://ci.example.test/job/1234",
        },
    )
    api(
        "POST",
        "/api/holidays/",
        {"holidays": [{"date": "2999-12-24", "reason": "Christmas Eve", "environments": ["live"]}]},
    )
    open_page(browser, server)
    click(browser, "shop/cart/live", "button.history-toggle")
    until(
        browser,
        lambda: cell(browser, "shop/cart/live").find_elements(By.CSS_SELECTOR, "ol.history li"),
        "history",
    )
    target = Path(os.environ.get("GITSTATE_UI_SCREENSHOT") or tmp_path / "ui.png")
    assert browser.save_screenshot(str(target))
    assert target.stat().st_size > 0
