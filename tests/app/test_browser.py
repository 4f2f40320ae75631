"""A real browser against a real server: ``streamlit run app/main.py`` on 127.0.0.1, headless Chromium asks a
question through the chat box, and the answer with its citation is checked on the page and saved as a
screenshot (its path is printed). Uses the real default model, so it is also marked slow."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.app.conftest import REPO_ROOT, assert_quotes_the_kb

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PDF = "zfcg-xinxi-fabu-guanli-banfa.pdf"
QUESTION = "同一条政府采购信息在不同媒体上发布的内容或时间不一致时，以哪里发布的为准？"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {seconds} s")


@pytest.fixture
def server(app_env, eval_dir, tmp_path):
    """The app serving a knowledge base that already holds one PDF (built with the ingest API)."""
    from ingest import ingest_files
    from kbcore.config import load_settings

    settings = load_settings()  # app_env's variables: the tmp kb root
    report = ingest_files([eval_dir / "docs" / PDF], settings, kb_path=settings.kb_path)
    assert report.summary()["files_added"] == 1
    port = _free_port()
    env = {**os.environ, "KBCHAT_LLM__MAX_NEW_TOKENS": "64", "KBCHAT_LLM__TEMPERATURE": "0"}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         # No file watcher: an edit elsewhere in the tree must not put a "rerun" banner over the answer.
         "--server.fileWatcherType", "none"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        print((tmp_path / "streamlit.log").read_text()[-3000:])


@pytest.fixture
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="kbchat-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_ask_in_the_browser_and_see_the_cited_answer(server, browser, app_env, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    wait = WebDriverWait(browser, 60)
    box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']")))
    box.send_keys(QUESTION)
    box.send_keys(Keys.ENTER)

    # The answer is finished when its citation expander appears under it (model load + generation).
    WebDriverWait(browser, 480).until(
        lambda d: PDF in " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander']")))
    expander = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander'] summary")[-1]
    expander.click()
    time.sleep(1)
    screenshot = Path(os.environ.get("APP_SCREENSHOT_DIR", tmp_path)) / "app-answer.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")

    page = browser.find_element(By.TAG_NAME, "body").text
    assert QUESTION in page
    # The citation names the file and page, and the opened expander quotes that passage of the stored document
    # (the 0.5B model's wording and which passage it cites vary; the app must show whatever it cited).
    label = re.search(rf"\[\d+\] {re.escape(PDF)} · pp?\. \d+(?:–\d+)?", expander.text)
    assert label, expander.text
    quoted = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stExpanderDetails'] blockquote")
    assert quoted and len(quoted[-1].text) > 10
    assert_quotes_the_kb(app_env / "default", label.group(0), quoted[-1].text)
    messages = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stChatMessage']")
    assert len(messages) == 2
