"""A real browser through condure: headless chromium loads a page that
examples/handoffhandler.py answers, then opens a WebSocket from that page
and has messages of every size echoed, text and binary, with and without
permessage-deflate (which chromium offers with ``client_max_window_bits``)."""

from __future__ import annotations

import pytest

from tests.harness.browser import CHROMIUM, Browser
from tests.integration.test_ws_bulk import (
    fixture_echo_condure,  # noqa: F401 - the fixture 'echo_condure': pytest finds it here
)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium missing")

ECHO = """
(() => {
  window.result = null;
  const ws = new WebSocket(`ws://${location.host}/echo`);
  ws.binaryType = "arraybuffer";
  const N = 300, B = 60;
  let n = 0, ok = 0;
  const text = (i) => JSON.stringify({i: i, pad: "h\u00e9llo \u20ac ".repeat(i * 7)});
  const bin = (i) => {
    const a = new Uint8Array(i * 97 + 1);
    for (let k = 0; k < a.length; k++) a[k] = (k * 31 + i) & 255;
    return a;
  };
  ws.onopen = () => {
    for (let i = 0; i < N; i++) ws.send(text(i));
    for (let i = 0; i < B; i++) ws.send(bin(i));
  };
  ws.onmessage = (e) => {
    if (n < N) { if (typeof e.data === "string" && e.data === text(n)) ok++; }
    else {
      const want = bin(n - N), got = new Uint8Array(e.data);
      if (got.length === want.length && got.every((v, k) => v === want[k])) ok++;
    }
    n++;
    if (n === N + B) { window.result = {ok: ok, of: N + B, ext: ws.extensions}; ws.close(1000); }
  };
  ws.onerror = () => { window.result = {error: true}; };
})();
"""


@pytest.mark.parametrize("echo_condure", [False, True], indirect=True,
                         ids=["plain", "deflate"])
def test_a_browser_page_and_its_websocket(echo_condure, tmp_path):
    condure, compression = echo_condure
    with Browser(tmp_path / "profile") as browser:
        browser.navigate(f"http://127.0.0.1:{condure.port}/hello")
        assert browser.wait_for("document.body && document.body.innerText") == "ok /hello\n"
        browser.evaluate(ECHO)
        result = browser.wait_for("window.result", timeout=60)
    # chromium offers context takeover; condure's default answer asks it to
    # compress each message on its own (--compression-context server)
    ext = "permessage-deflate; client_no_context_takeover" if compression else ""
    assert result == {"ok": 360, "of": 360, "ext": ext}, result
