"""The usage page in a real browser: Debian's headless Chromium, driven by Selenium through Debian's
chromium-driver (no browser download), against `tollgate dev` after mixed traffic. It signs in with a
key, finds the charts drawn with the totals the ledger charged, downloads a statement whose lines add
up to them, and looks at the page on a phone's width.

Screenshots go to the test's output directory (printed), or to ``TOLLGATE_SCREENSHOTS_DIR`` when set
(the README's screenshot is made that way)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support import Dev

chromium = shutil.which("chromium") or "/usr/bin/chromium"
chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
desktop = (1280, 2200)
phone = (390, 844)  # CSS pixels of a common phone
T = TypeVar("T")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    root = tmp_path_factory.mktemp("dev-dashboard")
    running = Dev(root, root)
    yield running
    running.stop()


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def browser(downloads: Path) -> Iterator[WebDriver]:
    assert Path(chromium).exists() and Path(chromedriver).exists(), "apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={desktop[0]},{desktop[1]}")
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(60)
    # Charts drawn at once (the page honours reduced motion), so what is read and shot is final.
    reduced = {"features": [{"name": "prefers-reduced-motion", "value": "reduce"}]}
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", reduced)
    yield driver
    driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TOLLGATE_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


def eventually(probe: Callable[[], T | None], what: str, timeout_s: float = 60) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.25)
    raise AssertionError(f"not in {timeout_s} s: {what}")


def traffic(dev: Dev, key: str) -> int:
    """Chats on two models (the spend charts stack them); the micros the ledger charged, per its header."""
    client = dev.client(key)
    charged = 0
    for n, model in enumerate(["sim-chat-small"] * 4 + ["sim-chat-large"] * 2):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"page request {n}"}], max_tokens=10 + n
        )
        charged += int(Decimal(raw.headers["x-credits-used"]) * 1_000_000)
    with pytest.raises(openai.NotFoundError):  # an error that costs nothing and charts nothing
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    return charged


def sign_in(driver: WebDriver, dev: Dev, key: str) -> None:
    driver.get(f"{dev.base_url}/dashboard")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form[action='/dashboard/login'] button[type=submit]").click()
    eventually(lambda: driver.find_elements(By.ID, "usage-log") or None, "the page after signing in")


def charted(driver: WebDriver) -> dict[str, Any]:
    """What Chart.js drew, read from its chart objects (micros), and whether each canvas has ink."""
    script = """
      const sum = (values) => values.reduce((a, b) => a + b, 0);
      const chart = (id) => Chart.getChart(id);
      const inked = (id) => {
        const canvas = document.getElementById(id);
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let painted = 0;
        for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] !== 0) { painted += 1; } }
        return painted;
      };
      const ids = ["chart-balance", "chart-spend-day", "chart-spend-model"];
      return {
        drawn: ids.filter((id) => chart(id) !== undefined),
        inked: Object.fromEntries(ids.map((id) => [id, inked(id)])),
        by_day: sum(chart("chart-spend-day").data.datasets.map((d) => sum(d.data))),
        by_model: sum(chart("chart-spend-model").data.datasets[0].data),
        models: chart("chart-spend-day").data.datasets.map((d) => d.label),
        last_balance: chart("chart-balance").data.datasets[0].data.at(-1),
      };
    """
    result: dict[str, Any] = driver.execute_script(script)
    return result


def test_a_key_holder_sees_the_charts_and_downloads_a_statement_that_adds_up(
    dev: Dev, browser: WebDriver, downloads: Path, screenshots: Path
) -> None:
    granted = 5_000_000
    org, key = dev.organization(credits=5)
    charged = traffic(dev, key)
    assert charged > 0
    sign_in(browser, dev, key)

    def spend_shown() -> int | None:
        browser.refresh()  # the projector writes ClickHouse a moment after the answers
        shown = browser.find_element(By.ID, "spend").get_attribute("data-spend-micros")
        return int(shown) if shown and int(shown) == charged else None

    eventually(spend_shown, f"the page's spend reaching the {charged} micros charged")
    eventually(lambda: charted(browser) if charted(browser)["inked"]["chart-spend-model"] > 0 else None, "charts")
    drawn = charted(browser)
    assert drawn["drawn"] == ["chart-balance", "chart-spend-day", "chart-spend-model"]
    assert all(painted > 0 for painted in drawn["inked"].values()), drawn["inked"]
    assert drawn["by_day"] == charged and drawn["by_model"] == charged
    assert sorted(drawn["models"]) == ["sim-chat-large", "sim-chat-small"]
    balance = int(browser.find_element(By.ID, "balance").get_attribute("data-balance-micros") or "")
    assert balance == granted - charged and drawn["last_balance"] == balance
    rows = browser.find_elements(By.CSS_SELECTOR, "#usage-log tbody tr[data-cost-micros]")
    assert sum(int(row.get_attribute("data-cost-micros") or "") for row in rows) == charged
    assert len(rows) == 6, "six answered chats; the 404 never reached the ledger"
    assert org in browser.page_source and key not in browser.current_url
    browser.save_screenshot(str(screenshots / "dashboard-desktop.png"))

    browser.find_element(By.ID, "download-csv").click()
    statement = eventually(
        lambda: next((p for p in downloads.glob("statement-*.csv") if p.stat().st_size > 0), None),
        "the statement download",
    )
    lines = list(csv.DictReader(io.StringIO(statement.read_text())))
    items = [line for line in lines if line["unit"] != "total"]
    assert sum(int(line["amount_micros"]) for line in items) == charged
    assert int(next(line for line in lines if line["unit"] == "total")["amount_micros"]) == charged
    browser.find_element(By.ID, "download-pdf").click()
    pdf = eventually(
        lambda: next((p for p in downloads.glob("statement-*.pdf") if p.stat().st_size > 0), None), "the PDF"
    )
    assert pdf.read_bytes().startswith(b"%PDF-")

    browser.set_window_size(*phone)
    browser.refresh()
    browser.execute_script("window.scrollTo(0, 0)")
    eventually(lambda: charted(browser) if charted(browser)["inked"]["chart-balance"] > 0 else None, "phone charts")
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
    browser.save_screenshot(str(screenshots / "dashboard-phone.png"))


def test_a_wrong_key_is_told_why_and_gets_no_page(dev: Dev, browser: WebDriver) -> None:
    browser.get(f"{dev.base_url}/dashboard")
    browser.find_element(By.ID, "key").send_keys("tg_wrong")
    browser.find_element(By.CSS_SELECTOR, "form[action='/dashboard/login'] button[type=submit]").click()
    error = eventually(lambda: browser.find_elements(By.ID, "login-error") or None, "the login error")
    assert "unknown, revoked or expired" in error[0].text
    assert not browser.find_elements(By.ID, "usage-log") and browser.get_cookies() == []
