"""The README's policies tour, run word for word against the committed example config.

The tour's shell block is taken from the README as it is, with only the bridge's address
changed to this test's; the config is the committed ``bridge.yaml`` with only its upstream
targets pointed at this test's example services. So a README or config edit that breaks the
tour for a new user breaks this test.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from bridge.config.load import parse_yaml
from services.credentials import dev_credentials
from tests.conftest import PROTOS, ROOT, StartBridge


def tour_script(heading: str) -> str:
    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index(heading) :]
    match = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert match is not None, f"{heading} has no sh block"
    return match.group(1)


def committed_config(users_port: int, echo_port: int) -> dict:
    config = parse_yaml("bridge.yaml", (ROOT / "bridge.yaml").read_text())  # `on:` stays a key
    config["protos"]["include"] = [str(PROTOS)]
    config["protos"].pop("store", None)
    config["upstreams"]["users"]["targets"] = [f"127.0.0.1:{users_port}"]
    config["upstreams"]["echo"]["targets"] = [f"127.0.0.1:{echo_port}"]
    return config


async def run_tour(
    heading: str, start_bridge: StartBridge, users_port: int, echo_port: int, monkeypatch
) -> tuple[str, dict[str, str]]:
    """The README block under ``heading`` run by bash against the committed config."""
    credentials = dev_credentials(os.environ)  # what `make run` gives the bridge
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    bridge = await start_bridge(committed_config(users_port, echo_port))
    script = tour_script(heading).replace("http://127.0.0.1:8080", bridge.url)
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode(), credentials


async def test_the_policies_tour_works_word_for_word(
    start_bridge: StartBridge, users_server: int, echo_server: int, monkeypatch, tmp_path: Path
):
    text, credentials = await run_tour(
        "### Policies tour", start_bridge, users_server, echo_server, monkeypatch
    )
    assert credentials["BRIDGE_DEMO_KEY"] not in text  # the tour never prints the key
    statuses = re.findall(r"HTTP/1.1 (\d+)", text)
    # no credential, the token without the scope, with it, the forged one; the preflights
    # from an allowed and another origin (the 429's status line is not among the grepped)
    assert statuses == ["401", "403", "200", "401", "204", "403"], text
    assert 'WWW-Authenticate: Bearer realm="bridge", ApiKey realm="bridge"' in text
    assert '"name":"users/grace"' in text  # created with the key
    assert "the credential lacks the scope 'users.admin'" in text
    assert '"message": "bad signature"' in text
    assert "200 200 200 200 200 429" in text
    assert re.search(r"^RateLimit-Limit: 5", text, re.MULTILINE | re.IGNORECASE), text
    assert re.search(r"^Retry-After: \d+", text, re.MULTILINE | re.IGNORECASE), text
    assert "Access-Control-Allow-Origin: http://localhost:3000" in text
    assert text.count("Access-Control-Allow-Origin") == 1


async def test_the_composition_tour_works_word_for_word(
    start_bridge: StartBridge, users_server: int, echo_server: int, monkeypatch
):
    text, _ = await run_tour(
        "### Composition tour", start_bridge, users_server, echo_server, monkeypatch
    )
    lines = text.splitlines()
    assert lines[0] == (
        '{"user":{"displayName":"Ada Lovelace"},"greeting":{"message":"Hello, Ada Lovelace"}}'
    ), text
    assert '"ok": true' in lines[1] or '"ok":true' in lines[1], text
    assert [line.lower() for line in lines[2:]] == ["x-cache: miss", "x-cache: hit"], text
