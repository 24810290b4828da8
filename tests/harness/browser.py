"""Debian's chromium, headless, driven over the DevTools protocol: a real
browser as condure's client (its HTTP requests, its WebSocket handshake with
the permessage-deflate offer browsers make, its masking and framing).

    with Browser(tmp_path) as b:
        b.navigate("http://127.0.0.1:8000/hello")
        b.wait_for("document.body && document.body.innerText")

Only loopback is used; the browser runs with its own profile directory and
is stopped (and waited for) on exit.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from tests.harness import procs

CHROMIUM = shutil.which("chromium")


class Browser:
    def __init__(self, profile: Path) -> None:
        self.port = procs.free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--disable-extensions", "--disable-background-networking",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={profile}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loop = asyncio.new_event_loop()
        self.ws: Any = None
        self.next_id = 0
        try:
            self.loop.run_until_complete(self._attach())
        except BaseException:
            self.close()
            raise

    async def _attach(self) -> None:
        deadline = time.monotonic() + 30
        while True:  # readiness: the DevTools endpoint lists the page
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            await asyncio.sleep(0.1)
        self.ws = await connect(pages[0]["webSocketDebuggerUrl"], max_size=None)

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            answer = json.loads(await self.ws.recv())
            if answer.get("id") == ident:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.loop.run_until_complete(
            self._call("Runtime.evaluate", expression=expression, returnByValue=True))
        if "exceptionDetails" in result:
            raise RuntimeError(f"javascript: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.loop.run_until_complete(self._call("Page.navigate", url=url))

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None  # (a page still loading)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {expression}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.ws is not None:
            self.loop.run_until_complete(self.ws.close())
        self.loop.close()
        procs.terminate(self.proc)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
