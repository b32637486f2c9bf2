"""The running app in a real browser: Debian's Chromium driven by Playwright.

Starts ``streamlit run app.py`` on a free loopback port, opens the example case with one click,
waits for both estimates and saves a screenshot. Skips with the reason when Chromium is not
installed (`.ci/run` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("BONEAGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    port = _free_port()
    streamlit = shutil.which("streamlit", path=str(Path(sys.executable).parent)) or "streamlit"
    proc = subprocess.Popen(
        [streamlit, "run", str(REPO / "app.py"), "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited: {proc.stdout.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def screenshot_example(url: str, out: Path, timeout_s: float = 180) -> dict:
    """Open the app, click the first example case, wait for both estimates, save a screenshot.

    Returns:
        ``{"metrics": [text of each metric], "seconds_to_first_estimate": float}``.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("button", name="synthetic hand 12y").click(timeout=timeout_s * 1000)
        t0 = time.perf_counter()
        page.wait_for_selector('[data-testid="stMetric"]', timeout=timeout_s * 1000)
        page.wait_for_function(
            "document.querySelectorAll('[data-testid=\"stMetric\"]').length >= 2", timeout=timeout_s * 1000
        )
        elapsed = time.perf_counter() - t0
        page.wait_for_timeout(2500)  # let the plotly figures draw
        metrics = page.locator('[data-testid="stMetric"]').all_inner_texts()
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=False)
        browser.close()
    return {"metrics": metrics, "seconds_to_first_estimate": elapsed}


def test_example_in_a_real_browser(app_url, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    shot = tmp_path / "app.png"
    info = screenshot_example(app_url, shot)
    assert shot.stat().st_size > 20_000
    text = " ".join(info["metrics"])
    assert "Multi-step" in text and "End-to-end" in text
    assert " y " in text  # an age in years and months was rendered
