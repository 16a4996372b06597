"""A headless Chromium driven over the DevTools protocol through a pipe (no extra package).

``--remote-debugging-pipe`` makes Chromium read protocol commands from file descriptor 3 and
write replies and events to descriptor 4, as NUL-terminated JSON: a few lines of stdlib
instead of a websocket client or playwright. :func:`load_page` opens one page with the
network emulated offline and returns what a person would check: console errors, uncaught
exceptions, requests that left ``file:`` / ``data:``, every image's decoded size, and a
screenshot.

Also a script, to refresh the screenshot in the docs from a finished run::

    python tests/browser_support.py RUN/report.html docs/images/report.png
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""Executables tried in order (``GENVAL_CHROMIUM`` names another)."""

LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")
"""URL schemes a self-contained report may load; anything else would need the network."""

IMAGES_JS = """
(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  return images.map(i => ({alt: i.alt, src: i.currentSrc.slice(0, 40), complete: i.complete,
                           width: i.naturalWidth, height: i.naturalHeight}));
})()
"""


def find_chromium() -> str | None:
    """The Chromium executable: ``GENVAL_CHROMIUM``, else the first of :data:`CANDIDATES`."""
    given = os.environ.get("GENVAL_CHROMIUM")
    if given:
        return shutil.which(given)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    """What loading one page showed."""

    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    height: int = 0

    @property
    def problems(self) -> list[str]:
        """Everything that should not happen when a self-contained page loads offline."""
        return (self.console_errors + self.exceptions + self.log_errors
                + [f"external request: {u}" for u in self.external_requests]
                + [f"failed request: {u}" for u in self.failed_requests])


class Chromium:
    """One headless Chromium process and its DevTools pipe; use as a context manager."""

    def __init__(self, executable: str, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="genval-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", "--mute-audio",
                "--hide-scrollbars", "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}", "about:blank"]
        # Descriptors 3 and 4 of the browser are the pipe's ends: bash does the dup2 (dash
        # refuses descriptors above 9, and preexec_fn is unsafe once threads run).
        self._proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} ' + " ".join(
                f"{fd}>&-" for fd in (to_browser_r, from_browser_w) if fd not in (3, 4)),
             "bash", *args],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *complete, buffer = buffer.split(b"\0")
                for raw in complete:
                    self._messages.put(json.loads(raw))
        self._messages.put(None)  # the browser closed its end

    def send(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None) -> dict[str, Any]:
        """Send one command and wait for its reply; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._get(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_for(self, method: str, session: str | None = None) -> dict[str, Any]:
        """The first event ``method`` (of ``session``), waiting for it if not seen yet."""
        deadline = time.monotonic() + self.timeout
        seen = 0
        while True:
            for event in self._events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            seen = len(self._events)
            self._events.append(self._get(deadline, method))

    def events(self, session: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self._events if e.get("sessionId") == session]

    def _get(self, deadline: float, what: str) -> dict[str, Any]:
        try:
            message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"Chromium did not answer {what} in {self.timeout} s") from None
        if message is None:
            raise RuntimeError(f"Chromium exited (status {self._proc.poll()}) during {what}")
        return message

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._to_browser)
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def load_page(browser: Chromium, path: Path, *, screenshot: Path | None = None,
              width: int = 1200, height: int = 900, full_page: bool = True,
              settle: float = 0.5) -> PageReport:
    """Open ``path`` offline in a new tab; report errors, requests and images; optionally save
    a PNG screenshot (the whole page, or the first ``height`` pixels)."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True}
                           )["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Network.emulateNetworkConditions", {
        "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        session=session)
    browser.send("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        session=session)
    browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
    browser.wait_for("Page.loadEventFired", session)
    images = browser.send("Runtime.evaluate", {"expression": IMAGES_JS, "awaitPromise": True,
                                               "returnByValue": True}, session=session)
    time.sleep(settle)  # late console messages (timers) still count
    title = browser.send("Runtime.evaluate", {"expression": "document.title",
                                              "returnByValue": True}, session=session)
    metrics = browser.send("Page.getLayoutMetrics", session=session)
    report = PageReport(images=images["result"]["value"], title=title["result"]["value"],
                        height=int(metrics["cssContentSize"]["height"]))
    for event in browser.events(session):
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in
                            params.get("args", []))
            report.console_errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            report.exceptions.append(
                details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            report.log_errors.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(LOCAL_SCHEMES):
                report.external_requests.append(url)
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            report.failed_requests.append(f"{params.get('errorText')} ({params['requestId']})")
    if screenshot is not None:
        shot_height = report.height if full_page else height
        data = browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": full_page,
            "clip": {"x": 0, "y": 0, "width": width, "height": shot_height, "scale": 1}},
            session=session)["data"]
        screenshot.write_bytes(base64.b64decode(data))
    browser.send("Target.closeTarget", {"targetId": target})
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    executable = find_chromium()
    if executable is None:
        print("no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 1
    with Chromium(executable) as browser:
        report = load_page(browser, Path(argv[0]), screenshot=Path(argv[1]), full_page=False,
                           height=1180)  # the title, the notes and the GoF table
    for problem in report.problems:
        print(problem, file=sys.stderr)
    print(f"{argv[1]}: {len(report.images)} images, page {report.height} px high")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
