"""The console in a real browser: Debian's chromium, headless, driven by chromedriver through
selenium, against `scapgate serve` with its console listener, its scan workers and data from
real scans of the test images (a passing Deployment, a failing Pod admitted in warn mode).

- without the token: 401 and no data; a wrong token at the login form: 401 again;
- logged in: every page renders with the run's data, the links of the overview and the
  workloads page lead to pages that render, the workloads filter works, an image page shows the
  failing rules of the bad image and the command that reproduces its scan;
- `<script>` through a pod name and through the break-glass annotation (shown with the
  decision's warning) is text on the page, and nothing runs (no alert, CSP allows no script);
- a screenshot of every page is written to $SCAPGATE_ARTIFACTS (default .state/artifacts)/
  console/ (the README's docs/console.png is one of them).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import yaml

from tests.builders.webhooks import (REPO, Server, free_port, make_certs, make_review, pod_spec,
                                     policy_doc, until, workload)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOKEN = "console-" + "t" * 32
NAME_XSS = '<script>alert("name")</script>'
NOTE_XSS = '<script>alert("annotation")</script> incident 42'
PAGES = ("/", "/workloads", "/policies", "/decisions")


def artifacts() -> Path:
    out = Path(os.environ.get("SCAPGATE_ARTIFACTS") or REPO / ".state" / "artifacts") / "console"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser():
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} is missing: run `make deps` (scripts/install-deps.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as Driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions"):
        opts.add_argument(arg)
    opts.accept_insecure_certs = True        # the test CA is not in chromium's trust store
    driver = webdriver.Chrome(service=Driver(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def console(tmp_path_factory, registry, images, scap_datastream):
    """A server whose inventory holds a passing Deployment, a failing Pod (warn mode) and a
    break-glassed Pod with hostile text, each judged from a real scan."""
    tmp = tmp_path_factory.mktemp("console")
    pdir = tmp / "policies"
    pdir.mkdir()
    doc = policy_doc("default", default=True, priority=0, datastream=str(scap_datastream),
                     enforcement="warn", break_glass_users=["alice"])
    (pdir / "default.yaml").write_text(yaml.safe_dump(doc))
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    port = free_port()
    srv = Server(tmp / "srv", policy_dir=pdir, certs=make_certs(tmp / "certs"), workers=1,
                 env={"SCAPGATE_INSECURE_REGISTRIES": registry.host,
                      "SCAPGATE_CONSOLE_BIND": f"127.0.0.1:{port}",
                      "SCAPGATE_CONSOLE_TOKEN_FILE": str(token)}).start()
    client = srv.client()
    try:
        for review in (
                make_review(workload("Deployment", pod_spec([images["good"]]), name="api")),
                make_review(workload("Pod", pod_spec([images["bad"]]), name="web")),
                make_review(workload("Pod", pod_spec([images["bad"]]), name=NAME_XSS,
                                     annotations={"scapgate.io/break-glass": NOTE_XSS}))):
            until("judged (not pending)", lambda: client.review(review)["response"].get(
                "auditAnnotations", {}).get("verdict") not in (None, "pending"))
        yield srv, f"https://127.0.0.1:{port}"
    finally:
        client.close()
        srv.stop()


def text(driver) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.TAG_NAME, "body").text


def no_alert(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text


def navigate(driver, css: str) -> None:
    """Click the element css selects, and wait until the page it leads to has replaced this
    one (a click that finds the node already gone is retried, a bounded number of times)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    before = driver.current_url
    for attempt in range(3):
        try:
            element = driver.find_element(By.CSS_SELECTOR, css)
            element.click()
            break
        except (StaleElementReferenceException, WebDriverException):
            if attempt == 2:
                raise
            if driver.current_url != before:      # the click went through: do not click again
                break

    def replaced(_driver) -> bool:
        # chromium 156 reports a node of the page that was left as "does not belong to the
        # document", not as a stale element: both mean the new page is there
        try:
            element.is_enabled()
            return False
        except (StaleElementReferenceException, WebDriverException):
            return True
    WebDriverWait(driver, 30).until(replaced)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def login(driver, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By
    driver.get(base + "/login")
    box = driver.find_element(By.NAME, "token")
    box.clear()
    box.send_keys(token)
    navigate(driver, "form button[type=submit]")


def test_the_console_in_a_real_browser(browser, console):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    srv, base = console
    shots = artifacts()
    browser.delete_all_cookies()

    # no token: 401, no data
    browser.get(base + "/workloads")
    assert "Token required" in browser.title and "team-a" not in browser.page_source
    login(browser, base, "not-the-token-not-the-token")
    assert "That is not the console's token" in text(browser)
    assert "team-a" not in browser.page_source

    # logged in: every page renders with the run's data
    login(browser, base, TOKEN)
    assert urlsplit(browser.current_url).path == "/"
    for path in PAGES:
        browser.get(base + path)
        assert "scapgate console" in browser.title and "Token required" not in browser.title
        no_alert(browser)
        browser.save_screenshot(str(shots / f"{path.strip('/') or 'overview'}.png"))
    browser.get(base + "/")
    body = text(browser)
    assert "team-a" in body and "fail" in body and "pass" in body

    # every link of the overview and the workloads page leads to a page that renders
    for path in ("/", "/workloads"):
        browser.get(base + path)
        hrefs = [a.get_dom_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")]
        links = {urljoin(browser.current_url, h) for h in hrefs if isinstance(h, str) and h}
        links = {h for h in links if h.startswith(base) and "/logout" not in h}
        assert links
        for href in sorted(links):
            browser.get(href)
            assert "scapgate console" in browser.title and "Token required" not in \
                browser.title and "Not found" not in browser.title, href

    # the workloads filter: verdict fail shows the failing pods only
    browser.get(base + "/workloads")
    Select(browser.find_element(By.NAME, "verdict")).select_by_value("fail")
    navigate(browser, "form.filters button[type=submit]")
    rows = text(browser)
    assert "web" in rows and "api" not in rows.split("Workloads", 1)[1]
    browser.save_screenshot(str(shots / "workloads-fail.png"))

    # the bad image's page: its failing rules, the reproduce command
    navigate(browser, "a[href^='/images/']")
    page = text(browser)
    assert "inetutils-telnetd" in page or "telnetd" in page
    assert "scapgate scan" in page and "sha256:" in page
    browser.save_screenshot(str(shots / "image.png"))

    # hostile text is text: the pod name and the break-glass annotation, escaped and inert
    browser.get(base + "/workloads")
    assert NAME_XSS in text(browser)
    assert "&lt;script&gt;alert(\"name\")" in browser.page_source or \
        "&lt;script&gt;alert(&quot;name&quot;)" in browser.page_source
    no_alert(browser)
    browser.get(base + "/decisions")
    assert "alert(\"annotation\")" in text(browser)
    assert '<script>alert("annotation")' not in browser.page_source
    no_alert(browser)

    # logout: the cookie is gone, so is the data
    browser.get(base + "/logout")
    browser.get(base + "/workloads")
    assert "Token required" in browser.title and "team-a" not in browser.page_source
    shutil.copy(shots / "overview.png", shots / "console.png")
