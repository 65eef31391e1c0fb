"""The Dash example as a user runs it: gunicorn with 2 workers against this user's
autostarted server, driven in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by scripts/test.sh). Switches the data source,
applies the price update, and checks that both workers show the new version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from arrowpool import server as srv
from conftest import REPO, free_port, server_binary

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def gunicorn_app(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = dict(
        os.environ,
        XDG_RUNTIME_DIR=str(run),
        ARROWPOOLD=str(server_binary()),
        ARROWPOOL_MEMORY="512M",
        ARROWPOOL_DEMO_ROWS="20000",
    )
    env.pop("ARROWPOOL_SOCKET", None)
    port = free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen(
        [str(gunicorn), "-w", "2", "-b", f"127.0.0.1:{port}", "--chdir", str(REPO / "examples"),
         "--timeout", "60", "dash_app:create_server()"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.flush()
            pytest.fail(f"gunicorn did not serve the app:\n{(tmp_path / 'gunicorn.log').read_text()}")
        time.sleep(0.1)
    yield url, run
    proc.terminate()
    proc.wait(timeout=30)
    sock = run / "arrowpool" / "arrowpool.sock"
    if srv.listening(sock):
        srv.stop_server(sock)


def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail(
            "no chromium/chromedriver: scripts/test.sh installs Debian's chromium and chromium-driver",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_switch_update_and_both_workers_see_the_new_version(gunicorn_app, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, run = gunicorn_app
    driver = browser()
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(url)
        text = lambda id_: driver.find_element(By.ID, id_).text  # noqa: E731
        wait.until(lambda _: text("version").startswith("Company A: version 1"))
        wait.until(lambda _: len(driver.find_elements(By.CSS_SELECTOR, "#summary tr")) == 6)
        summary_a = text("summary")

        # Switch the data source to company B.
        driver.find_element(By.CSS_SELECTOR, "#source").click()
        option = wait.until(ec.element_to_be_clickable((By.XPATH, "//*[text()='Company B']")))
        option.click()
        wait.until(lambda _: text("version").startswith("Company B: version 1"))
        wait.until(lambda _: text("summary") != summary_a and len(text("summary")) > 0)
        summary_b = text("summary")

        # Apply the update: a new version of company B.
        box = driver.find_element(By.ID, "multiplier")
        box.clear()
        box.send_keys("2")
        driver.find_element(By.ID, "apply").click()
        wait.until(lambda _: text("apply-status") == "published version 2")
        wait.until(lambda _: text("version").startswith("Company B: version 2"))
        wait.until(lambda _: text("summary") != summary_b)
        driver.save_screenshot(str(tmp_path / "after-update.png"))

        # Every tick is a new request, served by whichever worker accepts it: keep
        # watching until both workers have said they see version 2.
        seen: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = text("worker")  # "worker PID sees Company B version N"
            parts = line.split()
            if len(parts) >= 2:
                seen[parts[1]] = line
            if sum("Company B version 2" in v for v in seen.values()) >= 2:
                break
            time.sleep(0.2)
        new = [pid for pid, v in seen.items() if "Company B version 2" in v]
        assert len(new) >= 2, f"workers seen: {seen}"
    finally:
        driver.quit()
    # One server for both workers, and it holds the two sources once each.
    log = (run / "arrowpool" / "arrowpoold.log").read_text()
    assert log.count("starting:") == 1, log
