"""Fixtures of the browser tests: a headless Chromium driven by Selenium from Trio, and
the console of `triobus_runtime` served by Hypercorn on a free loopback port.

Selenium's calls block, so `Browser` runs each of them on a thread
(`trio.to_thread.run_sync`) and waits for what a page shows by polling it under
`trio.fail_after`. The browser comes from Debian's `chromium` and `chromium-driver`
packages; without them the tests fail (they are part of the suite, not optional).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from triobus.actors import Runtime
from triobus.actors.console import ConsoleSettings, serve_console

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 900)
USER, PASSWORD = "ann", "secret-pw"
WAIT = 15.0  # seconds: how long a page gets to show what a test waits for
LIVE_INTERVAL = 0.1  # seconds between the live pages' checks (the default is 1 s)

# What a page is still doing while a test looks at it: an element found a moment ago
# may be gone (console.js swapped the live part) or not there yet.
_IN_FLUX = (NoSuchElementException, StaleElementReferenceException)


def _chromium() -> WebDriver:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"the browser tests need Chromium and its driver, but {', '.join(missing)} is"
            " missing: install the Debian packages chromium and chromium-driver"
            " (apt-get install chromium chromium-driver)",
            pytrace=False,
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # for console_errors
    try:
        return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except WebDriverException as ex:
        pytest.fail(
            f"Chromium did not start ({ex.msg}): check the Debian packages chromium and"
            " chromium-driver (their versions must match)",
            pytrace=False,
        )


class Browser:
    """A Chromium for Trio tests: every WebDriver call runs on a worker thread."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args))

    async def authenticate(self, user: str, password: str) -> None:
        """Send basic-auth credentials with every request of the browser, the page's
        own (fetch, EventSource) included, through the DevTools protocol."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        await self.call(self.driver.execute_cdp_cmd, "Network.enable", {})
        await self.call(
            self.driver.execute_cdp_cmd,
            "Network.setExtraHTTPHeaders",
            {"headers": {"Authorization": f"Basic {token}"}},
        )

    async def js(self, script: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, script, *args)

    async def wait(self, check: Callable[[], T | None], what: str, seconds: float = WAIT) -> T:
        """Poll `check` (run on a thread) until it returns a truthy value."""
        try:
            with trio.fail_after(seconds):
                while True:
                    try:
                        value = await self.call(check)
                    except _IN_FLUX:
                        value = None
                    if value:
                        return value
                    await trio.sleep(0.05)
        except trio.TooSlowError:
            url = await self.call(lambda: self.driver.current_url)
            body = await self.js("return document.body ? document.body.innerText : ''")
            raise AssertionError(
                f"waited {seconds} s for {what}, in vain; the page {url} shows:\n{body}"
            ) from None

    async def settled(self) -> None:
        """Wait until the page has loaded and, if it is live, console.js listens to its
        stream: from then on every change of what it shows reaches the page."""
        await self.wait(
            lambda: self.driver.execute_script(
                "var live = document.getElementById('live');"
                " return document.readyState === 'complete'"
                " && (!live || !live.dataset.source || live.dataset.listening === 'yes');"
            ),
            "the page to load and listen to its live stream",
        )

    async def open(self, url: str) -> None:
        await self.call(self.driver.get, url)
        await self.settled()

    async def text(self, css: str) -> str:
        """The text of the first element matching `css` ("" while there is none)."""
        found = await self.js(
            "var e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css
        )
        return str(found).strip()

    async def count(self, css: str) -> int:
        return int(await self.js("return document.querySelectorAll(arguments[0]).length;", css))

    async def wait_text(self, css: str, expected: str) -> str:
        """Wait until the element matching `css` shows `expected` in its text."""

        def shown() -> str | None:
            text = self.driver.find_element(By.CSS_SELECTOR, css).text
            return text if expected in text else None

        return await self.wait(shown, f"{css} to show {expected!r}")

    async def click(self, css: str) -> None:
        def clicked() -> bool:
            self.driver.find_element(By.CSS_SELECTOR, css).click()
            return True

        await self.wait(clicked, f"{css} to be clicked")

    async def type(self, css: str, text: str) -> None:
        def typed() -> bool:
            element = self.driver.find_element(By.CSS_SELECTOR, css)
            element.clear()
            element.send_keys(text)
            return bool(element.get_attribute("value") == text)

        await self.wait(typed, f"{text!r} to be typed into {css}")

    async def url(self) -> str:
        return await self.call(lambda: self.driver.current_url)

    async def screenshot(self, path: Path) -> None:
        """A PNG of the whole page (beyond the window, down to the end of its content)
        at `path`."""
        size = await self.js(
            "var e = document.documentElement, main = document.querySelector('main');"
            " var bottom = main ? main.getBoundingClientRect().bottom + window.scrollY"
            " : e.scrollHeight; return [e.scrollWidth, Math.ceil(bottom)];"
        )
        width, height = max(int(size[0]), WINDOW[0]), int(size[1])
        shot = await self.call(
            self.driver.execute_cdp_cmd,
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
        )
        await trio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        await trio.Path(path).write_bytes(base64.b64decode(shot["data"]))

    async def console_errors(self) -> list[str]:
        """The severe messages of the page's JavaScript console since the last call."""
        logs = await self.call(self.driver.get_log, "browser")
        return [json.dumps(e) for e in logs if e.get("level") == "SEVERE"]


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A fresh headless Chromium (no credentials: see `Browser.authenticate`)."""
    driver = _chromium()
    try:
        yield Browser(driver)
    finally:
        driver.quit()


@pytest.fixture
def console_settings() -> ConsoleSettings:
    return ConsoleSettings(users={USER: PASSWORD}, live_interval=LIVE_INTERVAL)


@pytest.fixture
async def console_url(
    triobus_runtime: Runtime, console_settings: ConsoleSettings
) -> AsyncIterator[str]:
    """The address of the console of `triobus_runtime`, such as http://127.0.0.1:41234."""
    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            serve_console, triobus_runtime, console_settings, bind="127.0.0.1:0"
        )
        addresses: list[str] = await nursery.start(serve)
        yield addresses[0]
        nursery.cancel_scope.cancel()  # at once: the browser's live streams are still open
