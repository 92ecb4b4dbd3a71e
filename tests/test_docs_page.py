"""The /docs page in headless Chromium: it lists the services, runs calls, follows registrations.

The page reads the bridge's /openapi.json; nothing here stubs it. A screenshot of the page,
taken once its unary call and server stream show their results, is kept as a test artifact in
test-artifacts/docs.png (gitignored, removed by `make clean`) and its path printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt

from tests.conftest import ROOT, Bridge, StartBridge, demo_config
from tests.teams import PING, PING_FILE, TOKEN, TeamServer, ping, register
from tests.test_browser import PageProblems, chromium_page
from tests.tokens import AUDIENCE, ISSUER, SECRET, claims

USERS = "demo.users.v1.UserService"
ECHO = "demo.echo.v1.EchoService"
API_KEY = "alice-key-0123456789"
SCREENSHOT = ROOT / "test-artifacts" / "docs.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def test_root_leads_to_the_docs_page(demo: Bridge) -> None:
    async with demo.request("GET", "/", allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (302, "/docs")
    async with demo.request("GET", "/docs") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert '<script type="module" src="/static/docs.js">' in await resp.text()


async def test_docs_page_lists_calls_and_follows_registrations(
    tmp_path: Path, start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    from playwright.async_api import expect

    bridge = await start_bridge(demo_config(users_server, echo_server, admin={"token": TOKEN}))
    team = await TeamServer(tmp_path / "team").start()
    try:
        async with chromium_page(tmp_path) as page:
            problems = PageProblems(page)
            await page.goto(bridge.url + "/")
            assert page.url == bridge.url + "/docs"
            for service in (USERS, ECHO):
                await expect(page.locator(f'section[data-service="{service}"]')).to_be_visible()

            await check_unary_over_rest(page)
            ticks = await check_server_stream(page)
            await keep_screenshot(page)
            await check_client_stream_and_bidi(page)

            await team.deploy({PING_FILE: PING}, {"acme.ping.v1.Ping/Get": ping})
            assert (await register(bridge, "ping", {PING_FILE: PING}, team.target))[0] == 201
            get = page.locator('details[data-method="acme.ping.v1.Ping/Get"]')
            await expect(get).to_be_attached()  # no reload: the page polls /openapi.json
            await get.locator("summary.head").click()
            await get.locator('form.rest input[name="id"]').fill("7")
            await get.locator("form.rest .send").click()
            await expect(get.locator(".rest-result")).to_contain_text('"id": "7"')
            # The methods already on the page were kept, with what they showed.
            await expect(ticks).to_have_count(3)
            assert problems.seen == []
    finally:
        await team.stop()


async def keep_screenshot(page: Any) -> None:
    """The whole page, with the results it shows, as test-artifacts/docs.png."""
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)  # a file left by an earlier run proves nothing
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    print(f"docs page screenshot: {SCREENSHOT}")
    data = SCREENSHOT.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, len(data)


async def check_unary_over_rest(page: Any) -> None:
    from playwright.async_api import expect

    get_user = page.locator(f'details[data-method="{USERS}/GetUser"]')
    await get_user.locator("summary.head").click()
    await expect(get_user.locator("div.response table.shape").first).to_contain_text("displayName")
    await get_user.locator('form.rest input[name="id"]').fill("1")
    await get_user.locator("form.rest .send").click()
    await expect(get_user.locator(".rest-status")).to_contain_text("200 OK")
    await expect(get_user.locator(".rest-result")).to_contain_text("Ada Lovelace")


async def check_server_stream(page: Any) -> Any:
    from playwright.async_api import expect

    tick = page.locator(f'details[data-method="{ECHO}/Tick"]')
    await tick.locator("summary.head").click()
    await tick.locator("textarea.message").fill('{"count": 3, "intervalMs": 30}')
    await tick.locator("button.start").click()
    received = tick.locator("ol.messages li.received")
    await expect(received).to_have_count(3)
    await expect(received.nth(2)).to_contain_text('"seq":"3"')
    await expect(tick.locator(".stream-status")).to_have_text("OK · 3 messages")
    return received


async def check_client_stream_and_bidi(page: Any) -> None:
    from playwright.async_api import expect

    total = page.locator(f'details[data-method="{ECHO}/Sum"]')
    await total.locator("summary.head").click()
    for value in (2, 5):
        await total.locator("textarea.message").fill(f'{{"value": {value}}}')
        await total.locator("button.send").click()
    await total.locator("button.end").click()
    await expect(total.locator("li.received")).to_contain_text('"total":"7"')
    await expect(total.locator(".stream-status")).to_have_text("OK · 1 message")

    chat = page.locator(f'details[data-method="{ECHO}/Chat"]')
    await chat.locator("summary.head").click()
    await chat.locator("textarea.message").fill('{"user": "ada", "text": "hi"}')
    await chat.locator("button.send").click()
    echoed = '{"user":"echo","text":"ada: hi","seq":"1"}'
    await expect(chat.locator("li.received")).to_have_text([echoed])
    await chat.locator("button.end").click()
    await expect(chat.locator(".stream-status")).to_have_text("OK · 1 message")


async def test_the_credential_typed_on_the_page_goes_with_rest_and_websocket_calls(
    tmp_path: Path, start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    from playwright.async_api import expect

    auth = {
        "api_keys": {"header": "x-api-key", "keys": f"alice={API_KEY}"},
        "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "secret": SECRET, "algorithms": ["HS256"]},
    }
    bridge = await start_bridge(demo_config(users_server, echo_server, auth=auth))
    async with chromium_page(tmp_path) as page:
        problems = PageProblems(page)
        await page.goto(bridge.url + "/docs")
        get_user = page.locator(f'details[data-method="{USERS}/GetUser"]')
        await get_user.locator("summary.head").click()
        await get_user.locator('form.rest input[name="id"]').fill("1")
        await get_user.locator("form.rest .send").click()
        await expect(get_user.locator(".rest-status")).to_contain_text("401")

        await type_credential(page, "x-api-key", API_KEY)
        await get_user.locator("form.rest .send").click()
        await expect(get_user.locator(".rest-result")).to_contain_text("Ada Lovelace")
        # A browser's WebSocket carries a bearer token in the upgrade URL (no headers there).
        token = jwt.encode(claims(), SECRET, "HS256")
        await type_credential(page, "Authorization", f"Bearer {token}")
        tick = await start_two_ticks(page)
        await expect(tick.locator(".stream-status")).to_have_text("OK · 2 messages")
        assert [p for p in problems.seen if "401" not in p] == []  # the refused fetch is logged


async def test_a_stream_needing_an_api_key_runs_with_the_key_typed_on_the_page(
    tmp_path: Path, start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    """The key goes in the upgrade's query under its header's name (/ws?x-api-key=...)."""
    from playwright.async_api import expect

    auth = {
        "api_keys": {"header": "x-api-key", "keys": f"alice={API_KEY}"},
        "rules": [{"match": f"{ECHO}/Tick", "require": "api_key"}],
    }
    bridge = await start_bridge(demo_config(users_server, echo_server, auth=auth))
    async with chromium_page(tmp_path) as page:
        problems = PageProblems(page)
        await page.goto(bridge.url + "/docs")
        tick = await start_two_ticks(page)
        await expect(tick.locator(".stream-status")).to_contain_text("UNAUTHENTICATED")

        await type_credential(page, "x-api-key", API_KEY)
        await tick.locator("button.start").click()
        await expect(tick.locator(".stream-status")).to_have_text("OK · 2 messages")
        assert problems.seen == []


async def type_credential(page: Any, header: str, value: str) -> None:
    await page.fill("#credential-header", header)
    await page.fill("#credential-value", value)


async def start_two_ticks(page: Any) -> Any:
    """Tick's section, its stream of two started from the page."""
    tick = page.locator(f'details[data-method="{ECHO}/Tick"]')
    await tick.locator("summary.head").click()
    await tick.locator("textarea.message").fill('{"count": 2}')
    await tick.locator("button.start").click()
    return tick


async def test_an_aggregate_is_listed_and_tried_like_any_route(
    tmp_path: Path, start_bridge: StartBridge, users_server: int, echo_server: int
) -> None:
    from playwright.async_api import expect

    calls = {"user": {"method": f"{USERS}/GetUser", "request": {"id": "{id}"}}}
    aggregate = {"route": "GET /bff/v1/users/{id}/home", "calls": calls}
    bridge = await start_bridge(demo_config(users_server, echo_server, aggregates=[aggregate]))
    async with chromium_page(tmp_path) as page:
        problems = PageProblems(page)
        await page.goto(bridge.url + "/docs")
        home = page.locator('section[data-service="aggregates"] details.method')
        await home.locator("summary.head").click()
        await home.locator('form.rest input[name="id"]').fill("1")
        await home.locator("form.rest .send").click()
        await expect(home.locator(".rest-result")).to_contain_text("Ada Lovelace")
        assert problems.seen == []


async def test_raw_body_routes_send_the_text_under_the_content_type_typed(
    tmp_path: Path, demo: Bridge
) -> None:
    """Upload (google.api.HttpBody) takes the textarea as its raw body, not as JSON; Download's
    reply is shown as raw bytes."""
    from playwright.async_api import expect

    async with chromium_page(tmp_path) as page:
        problems = PageProblems(page)
        await page.goto(demo.url + "/docs")
        upload = page.locator(f'details[data-method="{ECHO}/Upload"]')
        await upload.locator("summary.head").click()
        await expect(upload.locator("div.request h4")).to_contain_text("demo.echo.v1.UploadRequest")
        await upload.locator('form.rest input[name="name"]').fill("notes.csv")
        await upload.locator('form.rest input[name="Content-Type"]').fill("text/csv")
        await upload.locator("form.rest textarea.body").fill("a,b\n1,2\n")
        await upload.locator("form.rest .send").click()
        await expect(upload.locator(".rest-status")).to_contain_text("200 OK")
        await expect(upload.locator(".rest-result")).to_contain_text('"contentType": "text/csv"')
        await expect(upload.locator(".rest-result")).to_contain_text('"size": "8"')
        download = page.locator(f'details[data-method="{ECHO}/Download"]')
        await download.locator("summary.head").click()
        await expect(download.locator("div.response h4")).to_have_text("Response: string (binary)")
        assert problems.seen == []
