"""Fixtures that start real gRPC services and a real bridge on free loopback ports."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.app import start
from bridge.config import Settings, load_settings
from bridge.registry import ProtoSet, load_includes

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


@pytest.fixture(scope="session")
def demo_protos() -> ProtoSet:
    """The example protos compiled once for the whole session (protoc is the slow part)."""
    return asyncio.run(load_includes((PROTOS,)))


@pytest.fixture
async def users_server() -> AsyncIterator[int]:
    from services.users.server import start as start_users

    server, port = await start_users(0)
    yield port
    await server.stop(None)


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    from services.echo.server import start as start_echo

    server, port = await start_echo(0)
    yield port
    await server.stop(None)


def write_config(tmp_path: Path, text: str, **values: Any) -> Path:
    """Write a YAML config (``{name}`` placeholders filled from values) and return its path."""
    path = tmp_path / "bridge.yaml"
    path.write_text(textwrap.dedent(text).format(**values))
    return path


class Bridge:
    """A running bridge: its base URL, settings and an HTTP session to call it with."""

    def __init__(self, url: str, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.settings = settings
        self.http = session

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.http.request(method, self.url + path, **kwargs)

    async def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        """Make a request; return (status, parsed JSON body, headers)."""
        async with self.request(method, path, **kwargs) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers


StartBridge = Callable[..., Awaitable[Bridge]]


@pytest.fixture
async def start_bridge(tmp_path: Path, demo_protos: ProtoSet) -> AsyncIterator[StartBridge]:
    """Start bridges from config dicts or YAML; the example protos are preloaded unless told."""
    runners = []
    sessions = []

    async def _start(config: dict[str, Any] | str, *, preload: bool = True) -> Bridge:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        path = tmp_path / f"bridge-{len(runners)}.yaml"
        path.write_text(text)
        settings = load_settings(path)
        include = demo_protos if preload and settings.protos_include == (PROTOS,) else None
        runner, port = await start(settings, "127.0.0.1", 0, include)
        runners.append(runner)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Bridge(f"http://127.0.0.1:{port}", settings, session)

    yield _start
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


def demo_config(users_port: int | None = None, echo_port: int | None = None, **extra: Any) -> dict:
    """A config for the example services on the given ports."""
    upstreams: dict[str, Any] = {}
    services: dict[str, str] = {}
    if users_port:
        upstreams["users"] = {"targets": [f"127.0.0.1:{users_port}"], "timeout": "5s"}
        services["demo.users.v1.*"] = "users"
    if echo_port:
        upstreams["echo"] = {"targets": [f"127.0.0.1:{echo_port}"], "timeout": "10s"}
        services["demo.echo.v1.*"] = "echo"
    config = {"protos": {"include": [str(PROTOS)]}, "upstreams": upstreams, "services": services}
    config.update(extra)
    return config


@pytest.fixture
async def demo(start_bridge: StartBridge, users_server: int, echo_server: int) -> Bridge:
    """The bridge in front of both example services, with the default config."""
    return await start_bridge(demo_config(users_server, echo_server))
