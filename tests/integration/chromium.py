"""Drive headless Chromium over the DevTools protocol (standard library only), to check pages as a reader sees them.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol messages (JSON, each ended by a
NUL byte) on file descriptor 3 and writes replies and events on 4. A small shell wrapper maps those two
onto the child's stdin and stdout pipes. `Page` collects what a page reports while it loads and runs:
uncaught exceptions, ``console.error`` / ``console.assert`` calls and browser log errors (failed
resource loads, blocked content, ...).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--remote-debugging-pipe",
)
TIMEOUT_S = 60.0


def find_chromium() -> str | None:
    """The Chromium executable (Debian's ``chromium`` package), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """The browser died, timed out or answered a command with an error."""


class Browser:
    """One headless Chromium process and its protocol pipe."""

    def __init__(self, executable: str, profile: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self._log = (profile.parent / f"{profile.name}-stderr.log").open("wb")
        # fd 3 (commands in) <- our stdin pipe, fd 4 (messages out) -> our stdout pipe.
        self.process = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null',
                executable,
                *FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._next_id = 0
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self._event_added = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        while chunk := self.process.stdout.read1(1 << 16):
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        box = self._replies.get(message["id"])
                    if box is not None:
                        box.put(message)
                else:
                    with self._event_added:
                        self.events.append(message)
                        self._event_added.notify_all()

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        """Send one command and wait for its result."""
        with self._lock:
            self._next_id += 1
            number = self._next_id
            box: queue.Queue[dict[str, Any]] = queue.Queue()
            self._replies[number] = box
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\0")
            self.process.stdin.flush()
            reply = box.get(timeout=TIMEOUT_S)
        except (BrokenPipeError, queue.Empty) as error:
            raise BrowserError(
                f"{method}: no answer from Chromium ({type(error).__name__}); see its stderr log"
            ) from None
        finally:
            with self._lock:
                self._replies.pop(number, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_for(self, method: str, *, session: str, after: int) -> dict[str, Any]:
        """The first event `method` of `session` among the events received from index `after` on."""
        deadline = time.monotonic() + TIMEOUT_S
        with self._event_added:
            while True:
                for event in self.events[after:]:
                    if event.get("method") == method and event.get("sessionId") == session:
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrowserError(f"no {method} event within {TIMEOUT_S:.0f} s")
                self._event_added.wait(remaining)

    def close(self) -> None:
        with contextlib.suppress(BrowserError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@dataclass
class Page:
    """A tab of `browser` at a fixed viewport; `problems` lists what the page reported since it was opened."""

    browser: Browser
    session: str
    first_event: int
    problems: list[str] = field(default_factory=list)

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        start = len(self.browser.events)
        self.browser.call("Page.navigate", {"url": url}, session=self.session)
        self.browser.wait_for("Page.loadEventFired", session=self.session, after=start)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises are awaited)."""
        result = self.browser.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=self.session,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console errors and browser log errors reported by the page so far."""
        found = []
        for event in self.browser.events[self.first_event :]:
            if event.get("sessionId") != self.session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(
                    f"exception: {details.get('exception', {}).get('description') or details.get('text')}"
                )
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                texts = [str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])]
                found.append(f"console.{params['type']}: {' '.join(texts)}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                found.append(
                    f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".rstrip()
                )
        return found

    def screenshot(self, path: Path, *, full_page: bool = False, max_height: int = 16_000) -> Path:
        """A PNG of the viewport (or of the whole page, up to `max_height` CSS pixels)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.browser.call("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": min(size["height"], max_height),
                    "scale": 1,
                },
            )
        data = self.browser.call("Page.captureScreenshot", params, session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.contextmanager
def open_browser(executable: str, profile: Path) -> Iterator[Browser]:
    """A Chromium process with a fresh profile directory, closed afterwards."""
    browser = Browser(executable, profile)
    try:
        yield browser
    finally:
        browser.close()


def new_page(browser: Browser, *, width: int, height: int, mobile: bool = False) -> Page:
    """A new tab with the given viewport (`mobile` also honours the page's viewport meta tag)."""
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    first = len(browser.events)
    for method in ("Page.enable", "Runtime.enable", "Log.enable"):
        browser.call(method, session=session)
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        session=session,
    )
    return Page(browser, session, first)


IMAGES_JS = """
Promise.all(Array.from(document.images, (img) => img.decode().then(
  () => ({ok: true, width: img.naturalWidth, height: img.naturalHeight, shown: img.getBoundingClientRect().width}),
  (error) => ({ok: false, error: String(error), src: img.src.slice(0, 60)}))))
"""
"""Decode every image of the page: natural size and displayed width, or the decoding error."""

LAYOUT_JS = """
(() => {
  const width = document.documentElement.clientWidth;
  const offenders = [];
  const scrolls = (element) => ["auto", "scroll", "hidden"].includes(getComputedStyle(element).overflowX);
  for (const element of document.body.querySelectorAll("*")) {
    const box = element.getBoundingClientRect();
    // Text that runs out of its box counts too (its box fits, its scroll width does not).
    const right = box.left + Math.max(box.width, scrolls(element) ? 0 : element.scrollWidth);
    if (box.width === 0 || right <= width + 1) continue;
    // Wider than the window is fine inside a container that scrolls sideways (a wide table).
    let scroller = element.parentElement, clipped = false;
    while (scroller && scroller !== document.body) {
      if (scrolls(scroller) && scroller.getBoundingClientRect().right <= width + 1) {
        clipped = true; break;
      }
      scroller = scroller.parentElement;
    }
    if (!clipped) offenders.push(`${element.tagName.toLowerCase()}${element.id ? "#" + element.id : ""}: right edge ${Math.round(right)} px`);
  }
  return {viewport: window.innerWidth, client: width, scroll: document.documentElement.scrollWidth, offenders: offenders.slice(0, 10)};
})()
"""
"""Horizontal overflow: the page's scroll width and up to ten elements sticking out of the window."""


def file_url(path: Path) -> str:
    """``file://`` URL of a local file."""
    return path.resolve().as_uri()


def environment_note() -> str:
    """Why a browser check cannot run here (for skip reasons)."""
    if os.environ.get("CI"):
        return (
            "Chromium is not installed; .ci/run installs Debian's chromium package with apt-get when it can"
        )
    return "Chromium is not installed (apt-get install chromium)"
