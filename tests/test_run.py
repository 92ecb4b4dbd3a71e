"""``make run``'s supervisor: busy ports refused up front, readiness that a stale registration
does not block, and the admin token among the dev credentials."""

from __future__ import annotations

import asyncio
import shlex
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from services.credentials import dev_credentials
from services.run import busy_ports, describe_down, not_listening, probe
from tests.conftest import ROOT, demo_config


@contextmanager
def a_listening_and_a_free_port() -> Iterator[tuple[int, int]]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.socket() as spare:
            spare.bind(("127.0.0.1", 0))
            free = spare.getsockname()[1]
        yield listener.getsockname()[1], free


def test_a_listening_port_is_named_busy_and_a_free_one_is_not():
    with a_listening_and_a_free_port() as (taken, free):
        busy = busy_ports({"the bridge": taken, "users": free})
    assert busy == [f"127.0.0.1:{taken} (the bridge)"]


async def test_ready_needs_the_example_upstreams_only(start_bridge, users_server):
    bridge = await start_bridge(demo_config(users_server, 1))  # echo: nobody on port 1
    url = f"{bridge.url}/readyz"
    assert await asyncio.to_thread(probe, url, ("users",)) is None
    assert await asyncio.to_thread(probe, url, ("users", "echo")) == (
        "upstreams not reachable yet: echo"
    )


def test_a_stale_registration_is_described_with_its_way_out():
    assert "bridge protos remove gone" in describe_down("registration:gone")
    assert describe_down("echo") == "upstream 'echo' is not reachable"


def test_the_admin_token_is_made_up_once_and_kept(tmp_path):
    path = tmp_path / "dev.env"
    path.write_text("export BRIDGE_DEMO_KEY=k\nexport BRIDGE_API_KEYS=demo=k\n"
                    "export BRIDGE_JWT_SECRET=s\n")  # fmt: skip
    first = dev_credentials({}, path)
    assert first["BRIDGE_DEMO_KEY"] == "k" and first["BRIDGE_JWT_SECRET"] == "s"
    assert first["BRIDGE_ADMIN_TOKEN"]
    assert f"export BRIDGE_ADMIN_TOKEN={shlex.quote(first['BRIDGE_ADMIN_TOKEN'])}" in (
        path.read_text()
    )
    assert dev_credentials({}, path) == first
    assert dev_credentials({"BRIDGE_ADMIN_TOKEN": "mine"}, path)["BRIDGE_ADMIN_TOKEN"] == "mine"


def test_make_clean_removes_the_registrations_and_dev_credentials():
    # A registration left in .bridge/registry whose backend is gone must not outlive a clean.
    dry = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert ".bridge" in dry.stdout.split()


def test_a_service_outside_the_bridge_is_waited_for_by_its_port():
    # shop is no upstream of bridge.yaml (the README registers it), so /readyz cannot say.
    with a_listening_and_a_free_port() as (listening, free):
        assert not_listening({"shop": listening}) is None
        assert not_listening({"shop": free}) == "not listening yet: shop"
