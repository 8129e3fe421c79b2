"""The admin console in a real headless Chromium, against two real sites.

The sites run as an operator runs them (Procfile roles, real workers and beat);
the browser is Debian's chromium driven by its chromedriver through Selenium.
Both sites are on 127.0.0.1, and cookies do not tell ports apart: the browser
reaches the sender as 127.0.0.1 and the receiver as localhost, so each keeps
its own session. The tests run in file order, one operator's afternoon:
log in, create a connection (its token shown once), approve it on the other
side, pull a table and watch it complete, keep it in sync (create the sync
from the remote tables page, see its run complete verified, pause it, delete
it), suspend the connection and see the peer follow, and be refused without a
CSRF token. Screenshots of each page go to
test-artifacts/console/.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import SiteProcesses
from tests.helpers import ScratchDatabases, eventually

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (scripts/browser)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "console"
PASSWORD = "console-pass-Q7w!"
ROWS = 30_000
TABLE = """
CREATE TABLE gadgets (id bigint PRIMARY KEY, label text, price numeric(10,2));
INSERT INTO gadgets SELECT g, 'gadget ' || g, (g % 500) / 4.0
FROM generate_series(1, :n) g;
"""
PAGE_ENV = {
    "SYNC_BULK_PAGE_ROWS": "2000",  # a pull of several pages to watch
    "SYNC_SYNCS_TICK_SECONDS": "1",  # beat starts a due sync within a second
}


@pytest.fixture(scope="module")
def sites(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[tuple[SiteProcesses, SiteProcesses]]:
    workdir = tmp_path_factory.mktemp("console")
    sender = SiteProcesses(
        "sender", workdir, module_db_factory.create("ui_sender"), 13, **PAGE_ENV
    )
    receiver = SiteProcesses(
        "receiver", workdir, module_db_factory.create("ui_receiver"), 14, **PAGE_ENV
    )
    sender.sql(TABLE, n=ROWS)
    try:
        for site in (sender, receiver):
            site.cli("settings", "set", "enabled", "true")
            site.start()
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(2)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def sender_url(sender: SiteProcesses) -> str:
    return f"http://127.0.0.1:{sender.port}/admin"


def receiver_url(receiver: SiteProcesses) -> str:
    return f"http://localhost:{receiver.port}/admin"


def shot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def text(driver: WebDriver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def submit(driver: WebDriver, form_xpath: str) -> None:
    """Submit the form and wait until the next page has replaced this one
    (read at once, this page may still be the old one)."""
    driver.execute_script("window.dbsyncOldPage = true")
    driver.find_element(By.XPATH, f"{form_xpath}//button[@type='submit']").click()
    _wait_for_next_page(driver)


def click_and_load(driver: WebDriver, css: str) -> None:
    """Click a submit button and wait until the next page has replaced this one."""
    driver.execute_script("window.dbsyncOldPage = true")
    driver.find_element(By.CSS_SELECTOR, css).click()
    _wait_for_next_page(driver)


def _wait_for_next_page(driver: WebDriver) -> None:
    def loaded(d: WebDriver) -> bool:
        try:
            return bool(
                d.execute_script(
                    "return window.dbsyncOldPage === undefined"
                    " && document.readyState === 'complete'"
                )
            )
        except WebDriverException:  # asked in the middle of the navigation
            return False

    WebDriverWait(driver, 30, poll_frequency=0.2).until(loaded)


def action_form(action: str) -> str:
    return f"//form[input[@name='action' and @value='{action}']]"


def login(driver: WebDriver, base: str) -> None:
    driver.get(f"{base}/login")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    submit(driver, "//form")
    WebDriverWait(driver, 20).until(lambda d: d.current_url.endswith("/admin/"))


def test_the_console_is_off_until_a_password_is_set_then_log_in(
    sites: tuple[SiteProcesses, SiteProcesses], browser: WebDriver
) -> None:
    sender, receiver = sites
    for site in sites:
        assert httpx.get(f"{site.url}/admin/login", timeout=5).status_code == 404
        assert httpx.get(f"{site.url}/admin", timeout=5).status_code == 404
        done = site.cli("admin", "set-password", "--password-stdin", stdin=PASSWORD)
        assert "console is on" in done.stdout
    browser.get(f"{sender_url(sender)}/connections")
    assert browser.current_url.endswith("/admin/login")  # sent to log in first
    browser.find_element(By.ID, "password").send_keys("not the password")
    submit(browser, "//form")
    assert text(browser, "p.error") == "Wrong password."
    login(browser, sender_url(sender))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    cookie = browser.get_cookie("dbsync_admin")
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain http on loopback; Secure under https
    shot(browser, "01-overview")


def test_create_a_connection_and_see_its_token_once(
    sites: tuple[SiteProcesses, SiteProcesses], browser: WebDriver
) -> None:
    sender, receiver = sites
    browser.get(f"{sender_url(sender)}/connections")
    browser.find_element(By.ID, "name").send_keys("to-beta")
    browser.find_element(By.ID, "url").send_keys(receiver.url)
    submit(browser, "//form[@method='post' and contains(@action, '/connections')]")
    token = browser.find_element(By.ID, "new-token").get_attribute("value") or ""
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert browser.find_element(By.CSS_SELECTOR, "button[data-copy]").text == "Copy"
    shot(browser, "02-token-once")
    # Shown once: the list, the connection's own page never show it again.
    browser.get(f"{sender_url(sender)}/connections")
    assert token not in browser.page_source
    browser.find_element(By.LINK_TEXT, "to-beta").click()
    assert token not in browser.page_source
    assert sender.only_connection()["name"] == "to-beta"


def test_approve_the_pending_connection_on_the_receiver(
    sites: tuple[SiteProcesses, SiteProcesses], browser: WebDriver
) -> None:
    sender, receiver = sites
    eventually(lambda: receiver.only_connection(), timeout=60)
    login(browser, receiver_url(receiver))
    browser.get(f"{receiver_url(receiver)}/connections?status=pending")
    browser.find_element(By.LINK_TEXT, "to-beta").click()
    assert "pending" in text(browser, "#conn-status")
    shot(browser, "03-pending-connection")
    submit(browser, action_form("approve"))
    assert text(browser, "p.notice") == "Connection approved."
    assert text(browser, "#conn-status") == "active"
    eventually(lambda: sender.only_connection()["status"] == "active", timeout=60)


def test_start_a_pull_and_watch_it_complete(
    sites: tuple[SiteProcesses, SiteProcesses], browser: WebDriver
) -> None:
    sender, receiver = sites
    base = receiver_url(receiver)
    browser.get(f"{base}/connections")
    browser.find_element(By.LINK_TEXT, "to-beta").click()
    browser.find_element(By.LINK_TEXT, "Remote tables").click()
    row = browser.find_element(By.XPATH, "//tr[td/label[text()='gadgets']]")
    assert row.find_elements(By.TAG_NAME, "td")[2].text == str(ROWS)
    assert "missing" in row.text
    row.find_element(By.LINK_TEXT, "Preview").click()
    preview = browser.find_element(By.ID, "preview")
    assert "gadget 1" in preview.text
    shot(browser, "04-remote-tables")
    browser.find_element(
        By.XPATH, "//input[@name='table' and @value='gadgets']"
    ).click()
    click_and_load(browser, "button[value='pull']")
    assert "/admin/transfers/" in browser.current_url
    seen: set[str] = set()

    def completed(driver: WebDriver) -> bool:
        driver.refresh()  # the page also refreshes itself while it runs
        status = text(driver, "#transfer-status")
        seen.add(status)
        assert status in ("pending", "running", "completed"), status
        return status == "completed"

    WebDriverWait(browser, 120, poll_frequency=0.5).until(completed)
    assert f"{ROWS:,} / {ROWS:,}" in browser.find_element(By.TAG_NAME, "main").text
    shot(browser, "05-transfer-completed")
    assert receiver.sql("SELECT count(*) FROM gadgets") == [(ROWS,)]
    browser.get(f"{base}/connections/{receiver.only_connection()['id']}/tables")
    row = browser.find_element(By.XPATH, "//tr[td/label[text()='gadgets']]")
    assert "same" in row.text  # the local copy now matches the sender's checksum
    browser.get(f"{base}/transfers")
    shot(browser, "06-transfers")


def test_keep_the_table_in_sync_pause_and_delete_the_sync(
    sites: tuple[SiteProcesses, SiteProcesses], browser: WebDriver
) -> None:
    sender, receiver = sites
    base = receiver_url(receiver)
    rid = receiver.only_connection()["id"]
    browser.get(f"{base}/connections/{rid}/tables")
    browser.find_element(
        By.XPATH, "//input[@name='table' and @value='gadgets']"
    ).click()
    every = browser.find_element(By.ID, "sync-every")
    every.clear()
    every.send_keys("1h")  # one run now, the next in an hour
    browser.find_element(By.XPATH, "//input[@name='mirror_deletes']").click()
    click_and_load(browser, "button[value='sync']")
    assert "/admin/syncs" in browser.current_url
    assert text(browser, "p.notice") == (
        "Sync created; beat starts its first run at its next tick."
    )
    (sync,) = receiver.cli_json("syncs", "list")
    assert (sync["tables"], sync["every_seconds"], sync["mode"]) == (
        ["gadgets"],
        3600,
        "delta",
    )
    assert (sync["strategy"], sync["mirror_deletes"]) == ("overwrite", True)
    row = f"#sync-{sync['id']}"

    def run_verified(driver: WebDriver) -> bool:
        driver.get(f"{base}/syncs")
        last = text(driver, f"{row} .sync-last")
        assert "differs" not in last and "failed" not in last, last
        return last.startswith("completed verified")

    WebDriverWait(browser, 90, poll_frequency=1).until(run_verified)
    assert text(browser, f"{row} .sync-state") == "active"
    assert "1h" in text(browser, row)
    shot(browser, "09-syncs")
    click_and_load(browser, f"{row} .sync-last a")
    assert text(browser, "#transfer-status") == "completed"
    assert text(browser, "#transfer-verification") == "verified"
    # The table was already level: the delta run compared and moved nothing.
    checks = text(browser, "#checks")
    assert "gadgets verified delta · compared equal, nothing moved" in checks
    shot(browser, "10-sync-run")

    browser.get(f"{base}/syncs")
    click_and_load(browser, f"{row} button[aria-label^='Pause']")
    assert text(browser, "p.notice") == "Sync paused; a run in progress finishes."
    assert text(browser, f"{row} .sync-state") == "paused"
    assert receiver.cli_json("syncs", "show", sync["id"])["paused"] is True
    click_and_load(browser, f"{row} button[aria-label^='Delete']")
    assert text(browser, "p.notice") == "Sync deleted; its transfers stay."
    assert "No syncs yet" in text(browser, "#syncs")
    assert receiver.cli_json("syncs", "list") == []


def test_suspend_and_see_the_peer_follow(
    sites: tuple[SiteProcesses, SiteProcesses], browser: WebDriver
) -> None:
    sender, receiver = sites
    login(browser, sender_url(sender))  # the sender's session (127.0.0.1) is kept
    browser.get(f"{sender_url(sender)}/connections")
    browser.find_element(By.LINK_TEXT, "to-beta").click()
    browser.find_element(By.ID, "reason-suspend").send_keys("maintenance window")
    submit(browser, action_form("suspend"))
    assert text(browser, "#conn-status") == "suspended"
    shot(browser, "07-suspended")
    rid = receiver.only_connection()["id"]

    def peer_suspended(driver: WebDriver) -> bool:
        driver.get(f"{receiver_url(receiver)}/connections/{rid}")
        return text(driver, "#conn-status") == "suspended"

    WebDriverWait(browser, 60, poll_frequency=1).until(peer_suspended)
    assert receiver.only_connection()["suspended_by"] == "peer"
    browser.get(f"{receiver_url(receiver)}/audit")
    assert "connection.suspended" in browser.page_source
    shot(browser, "08-audit")


def test_a_form_post_without_the_csrf_token_is_refused(
    sites: tuple[SiteProcesses, SiteProcesses], browser: WebDriver
) -> None:
    sender, _ = sites
    browser.get(f"{sender_url(sender)}/connections")
    cookie = browser.get_cookie("dbsync_admin")
    assert cookie is not None
    cid = sender.only_connection()["id"]
    jar = {"dbsync_admin": cookie["value"]}
    for form in ({"action": "reactivate"}, {"action": "reactivate", "csrf": "x" * 64}):
        refused = httpx.post(
            f"{sender.url}/admin/connections/{cid}", data=form, cookies=jar, timeout=10
        )
        assert refused.status_code == 403
        assert refused.json() == {
            "success": False,
            "error": "CSRF token missing or wrong",
        }
    assert sender.only_connection()["status"] == "suspended"
    # The same post with the page's token is taken.
    token = browser.find_element(By.NAME, "csrf").get_attribute("value")
    taken = httpx.post(
        f"{sender.url}/admin/connections/{cid}",
        data={"action": "reactivate", "csrf": token},
        cookies=jar,
        timeout=10,
    )
    assert taken.status_code == 303
    assert sender.only_connection()["status"] == "active"


def test_logins_are_rate_limited(sites: tuple[SiteProcesses, SiteProcesses]) -> None:
    _, receiver = sites
    url = f"{receiver.url}/admin/login"
    codes = [
        httpx.post(url, data={"password": f"wrong-{n}"}, timeout=10).status_code
        for n in range(6)
    ]
    assert codes == [401] * 5 + [429]
    right = httpx.post(url, data={"password": PASSWORD}, timeout=10)
    assert right.status_code == 429  # the window holds even for the right password
    assert int(right.headers["Retry-After"]) > 0
