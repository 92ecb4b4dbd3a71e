"""bridge.js and the demo page in a real browser: headless Chromium driven by Playwright.

The browser is Debian's ``chromium`` at /usr/bin/chromium (``make install`` installs it);
Playwright only drives it, and never downloads a browser of its own. A missing browser is a
failure, not a skip, so a machine without it cannot pass quietly.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Bridge

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000


class PageProblems:
    """Uncaught exceptions and console errors seen on a page."""

    def __init__(self, page: Any) -> None:
        self.seen: list[str] = []
        page.on("pageerror", lambda exc: self.seen.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.seen.append(f"console error: {message.text}")


@asynccontextmanager
async def chromium_page(tmp_path: Path) -> AsyncIterator[Any]:
    """A page in headless Chromium with a new, empty profile.

    Opened inside each test rather than in a fixture, so that a missing browser is reported
    as that test failing.
    """
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium package "
            "(make install installs it: apt-get install -y --no-install-recommends chromium)",
            pytrace=False,
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: run make install", pytrace=False)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context.pages[0] if context.pages else await context.new_page()
        finally:
            await context.close()
            shutil.rmtree(profile, ignore_errors=True)


async def open_demo(page: Any, demo: Bridge) -> PageProblems:
    from playwright.async_api import expect

    problems = PageProblems(page)
    await page.goto(demo.url + "/demo")
    await expect(page.locator("#conn-status")).to_have_text("connected")
    return problems


async def test_demo_page_unary_server_stream_and_bidi(tmp_path: Path, demo: Bridge) -> None:
    async with chromium_page(tmp_path) as page:
        await check_demo_widgets(page, demo)


async def check_demo_widgets(page: Any, demo: Bridge) -> None:
    from playwright.async_api import expect

    problems = await open_demo(page, demo)

    # Unary: GetUser.
    await page.fill("#user-id", "1")
    await page.click("#get-user")
    await expect(page.locator("#user-result")).to_contain_text("Ada Lovelace")
    await expect(page.locator("#user-status")).to_have_text("OK")

    # A unary error is shown on the widget, with its code name.
    await page.fill("#user-id", "nobody")
    await page.click("#get-user")
    await expect(page.locator("#user-status")).to_contain_text("NOT_FOUND")

    # Server stream: Tick, five events in order.
    await page.fill("#feed-count", "5")
    await page.fill("#feed-interval", "30")
    await page.click("#feed-start")
    ticks = [f"tick {n}" for n in range(1, 6)]
    await expect(page.locator("#feed-list li")).to_have_text(ticks)
    await expect(page.locator("#feed-status")).to_have_text("done: 5 events")

    # Bidi: Chat, two messages on one call, both echoes shown in order.
    await page.fill("#chat-name", "alice")
    for text in ("hello", "second message"):
        await page.fill("#chat-input", text)
        await page.click("#chat-send")
    replies = page.locator("#chat-log li.reply")
    await expect(replies).to_have_text(["echo: alice: hello", "echo: alice: second message"])
    assert await replies.evaluate_all("items => items.map(i => i.dataset.seq)") == ["1", "2"]

    # Ending the chat half-closes it; the backend then ends the call with OK.
    await page.click("#chat-end")
    await expect(page.locator("#chat-status")).to_contain_text("chat ended")

    await expect(page.locator("#errors li")).to_have_count(0)
    assert problems.seen == []


async def test_demo_feed_stop_cancels_the_stream(tmp_path: Path, demo: Bridge) -> None:
    async with chromium_page(tmp_path) as page:
        await check_feed_stop(page, demo)


async def check_feed_stop(page: Any, demo: Bridge) -> None:
    from playwright.async_api import expect

    problems = await open_demo(page, demo)
    await page.fill("#feed-count", "0")  # forever
    await page.fill("#feed-interval", "20")
    await page.click("#feed-start")
    await expect(page.locator("#feed-list li").nth(2)).to_have_text("tick 3")
    await page.click("#feed-stop")
    await expect(page.locator("#feed-status")).to_contain_text("stopped")
    assert problems.seen == []


# The library's API, run inside the page against the real bridge; returns what it saw.
API_SCRIPT = """
async () => {
  const { Bridge, BridgeError, Code } = await import("/static/bridge.js");
  const ECHO = "demo.echo.v1.EchoService";
  const USERS = "demo.users.v1.UserService";
  const out = {};
  const bridge = await Bridge.connect();
  const frameErrors = [];
  bridge.onerror = (error) => frameErrors.push(error.code);

  const failure = async (promise) => {
    try { await promise; return null; } catch (e) { return e; }
  };

  // Unary, with metadata and a timeout.
  const echo = await bridge.unary(`${ECHO}/Echo`, { message: "hi" },
    { metadata: { "x-demo": "yes" }, timeout: 3 });
  out.echo = { message: echo.message, meta: echo.metadata["x-demo"],
    deadlineOk: echo.deadlineRemaining > 0 && echo.deadlineRemaining <= 3 };

  // Unary errors carry code, status message, details and trailers.
  const missing = await failure(bridge.unary(`${USERS}/GetUser`, { id: "nobody" }));
  out.missing = { isBridgeError: missing instanceof BridgeError, code: missing.code,
    name: missing.name };
  const failed = await failure(bridge.unary(`${ECHO}/Fail`,
    { code: 3, message: "bad input", withDetails: true }));
  out.failed = { code: failed.code, statusMessage: failed.statusMessage,
    detailTypes: failed.details.map((d) => d["@type"]) };

  // Headers: the promise and the callback.
  let seenByCallback = null;
  const ticks = bridge.serverStream(`${ECHO}/Tick`, { count: 3 },
    { onheaders: (h) => (seenByCallback = h["x-tick-stream"]) });
  const texts = [];
  for await (const tick of ticks) texts.push(tick.seq);
  out.ticks = { seqs: texts, header: (await ticks.headers)["x-tick-stream"],
    callback: seenByCallback, status: (await ticks.status).code };

  // A stream that fails throws after the messages that came before the failure.
  const failing = bridge.serverStream(`${ECHO}/Tick`, { count: 5, failAfter: 2 });
  const before = [];
  let thrown = null;
  try { for await (const tick of failing) before.push(tick.seq); } catch (e) { thrown = e.code; }
  out.failing = { before, thrown };

  // Client streaming.
  const sum = bridge.clientStream(`${ECHO}/Sum`);
  for (const value of [1, 2, 3, 4]) sum.send({ value });
  sum.end();
  out.sum = await sum.response;

  // Bidi: send, read, end.
  const chat = bridge.bidi(`${ECHO}/Chat`);
  const iterator = chat[Symbol.asyncIterator]();
  chat.send({ user: "bob", text: "one" });
  const first = await iterator.next();
  chat.send({ user: "bob", text: "two" });
  const second = await iterator.next();
  chat.end();
  const last = await iterator.next();
  out.chat = { first: first.value.text, second: second.value.text, done: last.done,
    status: (await chat.status).code };

  // Leaving a for-await loop early cancels the call; cancel() ends iteration quietly.
  const endless = bridge.serverStream(`${ECHO}/Tick`, { count: 0, intervalMs: 5 });
  for await (const tick of endless) if (tick.seq === "3") break;
  out.brokeOut = (await endless.status).code;
  const cancelled = bridge.bidi(`${ECHO}/Chat`);
  cancelled.send({ user: "c", text: "x" });
  cancelled.cancel();
  const afterCancel = [];
  for await (const m of cancelled) afterCancel.push(m);
  out.cancelled = { messages: afterCancel.length, status: (await cancelled.status).code };

  // An AbortSignal cancels a unary call.
  const controller = new AbortController();
  const slow = bridge.unary(`${ECHO}/Echo`, { sleepMs: 2000 }, { signal: controller.signal });
  controller.abort();
  out.aborted = (await failure(slow)).code;

  // A slow reader: past maxBuffered the call is cancelled with RESOURCE_EXHAUSTED. (Endless,
  // so that the cancel always finds the call still open on the bridge.)
  const flood = bridge.serverStream(`${ECHO}/Tick`, { count: 0 }, { maxBuffered: 5 });
  out.flood = { status: (await flood.status).code };
  const kept = [];
  try { for await (const m of flood) kept.push(m.seq); } catch (e) { out.flood.thrown = e.code; }
  out.flood.kept = kept.length;

  // Unknown methods end with a status, not an error frame.
  out.unknown = (await failure(bridge.unary("no.Such/Method", {}))).code;

  // A frame the bridge cannot tie to a call comes back as an error frame.
  bridge.socket.send("not json");
  await bridge.unary(`${ECHO}/Echo`, {});  // the error frame arrives before this answer
  out.frameErrors = frameErrors;

  // Closing the socket fails the calls still open with UNAVAILABLE, and any new one.
  const open = bridge.serverStream(`${ECHO}/Tick`, { count: 0, intervalMs: 50 });
  const pending = bridge.unary(`${ECHO}/Echo`, { sleepMs: 5000 });
  bridge.close();
  out.closed = { stream: (await open.status).code, pending: (await failure(pending)).code,
    after: (await failure(bridge.unary(`${ECHO}/Echo`, {}))).code,
    active: bridge.activeCalls, open: bridge.open };
  out.codes = { UNAVAILABLE: Code.UNAVAILABLE };
  return out;
}
"""


async def test_client_api_in_the_browser(tmp_path: Path, demo: Bridge) -> None:
    async with chromium_page(tmp_path) as page:
        problems = PageProblems(page)
        await page.goto(demo.url + "/demo")  # a same-origin page to run the script in
        seen = await page.evaluate(API_SCRIPT)

    assert seen["echo"] == {"message": "hi", "meta": "yes", "deadlineOk": True}
    assert seen["missing"] == {"isBridgeError": True, "code": 5, "name": "BridgeError"}
    assert seen["failed"]["code"] == 3
    assert seen["failed"]["statusMessage"] == "bad input"
    assert seen["failed"]["detailTypes"] == ["type.googleapis.com/google.rpc.BadRequest"]
    assert seen["ticks"] == {
        "seqs": ["1", "2", "3"], "header": "started", "callback": "started", "status": 0,
    }  # fmt: skip
    assert seen["failing"] == {"before": ["1", "2"], "thrown": 14}
    assert seen["sum"] == {"total": "10", "count": 4}
    assert seen["chat"] == {"first": "bob: one", "second": "bob: two", "done": True, "status": 0}
    assert seen["brokeOut"] == 1
    assert seen["cancelled"] == {"messages": 0, "status": 1}
    assert seen["aborted"] == 1
    assert seen["flood"] == {"status": 8, "thrown": 8, "kept": 5}
    assert seen["unknown"] == 12
    assert seen["frameErrors"] == [3]
    assert seen["closed"] == {
        "stream": 14, "pending": 14, "after": 14, "active": 0, "open": False,
    }  # fmt: skip
    assert problems.seen == []
