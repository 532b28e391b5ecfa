"""Take the picture of the web app that docs/app.md shows: ``python -m halton.app`` on a trained model, after
Generate and Compare (the three schedulers' grids, one under the other), the whole page in a 1400 px wide window of
headless Chromium (``apt-get install chromium chromium-driver``; selenium comes with ``pip install -e '.[dev]'``).

    python train.py experiment=digits                              # runs/digits, about 3 minutes on 2 CPU cores
    python scripts/app_screenshot.py docs/app.png experiment=digits  # then any app override: checkpoint=, steps=, ...
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # given, so Selenium Manager downloads nothing
WIDTH = 1400


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_page(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the loopback, never through a proxy
    deadline = time.monotonic() + timeout
    while True:
        try:
            opener.open(url, timeout=1).close()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the app did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


def pictures_shown(driver, elem_ids: list[str], previous: dict[str, str | None], timeout: float = 300) -> dict:
    """Wait until each output shows a picture other than the one it showed before; their addresses."""
    def shown(d):
        found = {i: [img.get_attribute("src") for img in d.find_elements(By.CSS_SELECTOR, f"#{i} img")]
                 for i in elem_ids}
        new = {i: next((s for s in srcs if s and s != previous.get(i)), None) for i, srcs in found.items()}
        return new if all(new.values()) else False
    return WebDriverWait(driver, timeout).until(shown)


def main(out: Path, overrides: list[str]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "app.log"
        with open(log, "w") as stream, subprocess.Popen(
                [sys.executable, "-m", "halton.app", *overrides, f"port={port}"], cwd=ROOT, stdout=stream,
                stderr=subprocess.STDOUT) as server:
            try:
                wait_for_page(url, server, log)
                options = webdriver.ChromeOptions()
                options.binary_location = CHROMIUM
                for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                             "--no-proxy-server", f"--window-size={WIDTH},1000"):
                    options.add_argument(flag)
                driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
                try:
                    driver.get(url)
                    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "generate"))
                    driver.find_element(By.ID, "generate").click()
                    pictures_shown(driver, ["grid"], {})
                    next(t for t in driver.find_elements(By.CSS_SELECTOR, "[role=tab]")
                         if t.text == "Compare schedulers").click()
                    driver.find_element(By.ID, "compare").click()
                    pictures_shown(driver, ["compare_0", "compare_1", "compare_2"], {})
                    time.sleep(1)  # the last picture laid out
                    driver.set_window_size(WIDTH, driver.execute_script("return document.body.scrollHeight") + 100)
                    time.sleep(1)
                    driver.save_screenshot(str(out))
                finally:
                    driver.quit()
            finally:
                server.terminate()
                server.wait(timeout=30)
    print(f"{out}: the page after Generate and Compare ({' '.join(overrides) or 'the default experiment'})")


if __name__ == "__main__":
    if len(sys.argv) < 2 or not sys.argv[1].endswith(".png"):
        sys.exit("usage: python scripts/app_screenshot.py OUT.png [app overrides, e.g. experiment=digits]")
    main(Path(sys.argv[1]).resolve(), sys.argv[2:])
