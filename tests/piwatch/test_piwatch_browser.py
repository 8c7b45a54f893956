"""The live page in a real headless browser: Debian's chromium driven by selenium.

PiWatch runs under uvicorn on 127.0.0.1 (a free port) in a thread; chromium is started with
everything that phones home switched off, so the test sends no traffic off this machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
TOKEN = "5e1f0c0ffee0ddba11"
BEARER = {"authorization": f"Bearer {TOKEN}"}
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} not found: apt install chromium chromium-driver (scripts/setup-host.sh)",
)


@pytest.fixture
def server(settings, lights, tmp_path):
    import uvicorn

    from piwatch.app import create_app

    # A token, as on the router: the page has to ask for it before it may change anything.
    (tmp_path / "webhook-token").write_text(TOKEN)
    app = create_app(settings.model_copy(update={"webhook_token_file": tmp_path / "webhook-token"}),
                     lights=lights)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; no race with other tests
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield base
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Keep Selenium Manager from looking anything up online; we name both binaries ourselves.
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    monkeypatch.setenv("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps",
                 "--disable-extensions", "--metrics-recording-only",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def answer_prompt(driver, text):
    alert = wait_for(lambda: _alert(driver), what="the page's token prompt")
    assert "token" in alert.text
    alert.send_keys(text)
    alert.accept()


def _alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


def lamp(driver, direction, colour):
    return driver.find_element("id", f"light-{direction}-{colour}").get_attribute("data-state")


def test_posted_event_shows_up_on_the_page(server, browser):
    browser.get(server + "/")
    assert browser.title == "PiWatch"
    wait_for(lambda: browser.find_element("id", "gpio").text == "mock", what="gpio: mock")
    assert lamp(browser, "north", "green") == "off"

    meta = {"kind": "pod", "name": "shop-frontend-1", "namespace": "default", "reason": "created"}
    r = httpx.post(server + "/kubewatch", json={"eventmeta": meta, "text": "created"}, headers=BEARER)
    assert r.status_code == 202

    item = wait_for(lambda: [li for li in browser.find_elements("css selector", "#events li.event")
                             if "shop-frontend-1" in li.text], what="event in the list")[0]
    assert "north" in item.text and "created" in item.text
    wait_for(lambda: lamp(browser, "north", "green") == "on", what="north green lamp on")
    assert lamp(browser, "north", "red") == "off"


def test_alarm_banner_and_acknowledge_button(server, browser, lights):
    browser.get(server + "/")
    meta = {"kind": "node", "name": "pi-2", "namespace": "", "reason": "NodeNotReady"}
    assert httpx.post(server + "/kubewatch", json={"eventmeta": meta}, headers=BEARER).status_code == 202

    wait_for(lambda: lamp(browser, "south", "red") == "blink", what="south red blinking")
    banner = browser.find_element("id", "alarm")
    wait_for(lambda: banner.is_displayed() and "pi-2" in banner.text, what="alarm banner")
    assert "beep" in browser.find_element("id", "buzzer").text

    # The page asks for the token on the first 401; a wrong one is refused and changes nothing.
    browser.find_element("id", "ack").click()
    answer_prompt(browser, "wrong")
    notice = browser.find_element("id", "notice")
    wait_for(lambda: "refused" in notice.text, what="the page says the token was refused")
    assert httpx.get(server + "/lights").json()["buzzer"] == "beep"
    browser.find_element("id", "ack").click()
    answer_prompt(browser, TOKEN)
    wait_for(lambda: not banner.is_displayed(), what="banner gone after acknowledge")
    wait_for(lambda: notice.text == "", what="the refusal notice cleared")
    state = httpx.get(server + "/lights").json()
    assert state["alarms"][0]["acknowledged"] is True and state["buzzer"] == "off"
    wait_for(lambda: lamp(browser, "south", "red") == "on", what="south red steady")

    # Kept for the tab: the self-test needs no second prompt.
    lights.led_pin("east", "green").clear_states()
    browser.find_element("id", "selftest").click()
    wait_for(lambda: True in [s.state for s in lights.led_pin("east", "green").states],
             what="the self-test lights east green")
    assert _alert(browser) is None
    assert browser.execute_script("return sessionStorage.getItem('piwatch-token')") == TOKEN
