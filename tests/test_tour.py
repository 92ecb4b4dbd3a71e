"""The README's tours, run word for word against the committed example config.

Each tour's shell block is taken from the README as it is, with only the addresses changed to
this test's (the bridge's, and the shop service's for the registration tour); the config is the
committed ``bridge.yaml`` with only its upstream targets pointed at this test's example services.
So a README or config edit that breaks a tour for a new user breaks this test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from bridge.config.load import parse_yaml
from services.credentials import dev_credentials
from tests.conftest import PROTOS, ROOT, StartBridge
from tests.redis_server import free_port


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
    credentials = use_dev_credentials(monkeypatch)
    bridge = await start_bridge(committed_config(users_port, echo_port))
    script = tour_script(heading).replace("http://127.0.0.1:8080", bridge.url)
    return await bash(script), credentials


def use_dev_credentials(monkeypatch) -> dict[str, str]:
    """What `make run` gives the bridge (the admin token among them), set in the environment."""
    credentials = dev_credentials(os.environ)
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    return credentials


async def bash(script: str, timeout: float = 60) -> str:
    """Run script with bash in the repository root; its output, once it exited with 0."""
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"{script}\n---\n{out.decode()}\n{err.decode()}"
    return out.decode()


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


@pytest.fixture
async def shop_server() -> AsyncIterator[int]:
    from services.shop.server import start as start_shop

    server, port = await start_shop(0)
    yield port
    await server.stop(None)


async def test_the_registration_tour_works_word_for_word(
    start_bridge: StartBridge, users_server: int, echo_server: int, shop_server: int, monkeypatch
):
    use_dev_credentials(monkeypatch)
    bridge = await start_bridge(committed_config(users_server, echo_server))
    script = tour_script("## Registering protos at run time")
    # The README's addresses are make run's; `bridge protos` reaches this bridge with --admin.
    script = script.replace("http://127.0.0.1:8080", bridge.url)
    script = script.replace("127.0.0.1:50053", f"127.0.0.1:{shop_server}")
    script = re.sub(r"(\.venv/bin/bridge protos \w+)", rf"\1 --admin {bridge.url}", script)
    *lines, remove = script.strip().splitlines()
    assert lines[0] == "source .bridge/dev.env", script
    assert "protos remove" in remove and remove.endswith(" shop"), script
    assert await paths(bridge) & SHOP_PATHS == set()  # not in protos.include: unknown before

    text = await bash("\n".join(lines))
    assert "registered 'shop': demo.shop.v1.OrderService" in text, text
    assert f"shop  (127.0.0.1:{shop_server})  demo.shop.v1.OrderService" in text, text
    order = json.loads(next(line for line in text.splitlines() if '"item"' in line))
    assert order == {"id": "1001", "item": "teapot", "quantity": 1, "step": "STEP_SHIPPED"}, text
    steps = [json.loads(line)["result"]["step"] for line in text.splitlines() if '"result"' in line]
    assert steps == ["STEP_PLACED", "STEP_SHIPPED", "STEP_DELIVERED"], text
    # What /docs reads lists the new service's routes and carries its proto comments.
    document = await openapi(bridge)
    assert SHOP_PATHS <= document["paths"].keys()
    assert "Returns one order by its id." in json.dumps(document)

    text = await bash("\n".join([lines[0], remove]))
    assert "removed 'shop'" in text, text
    assert await paths(bridge) & SHOP_PATHS == set()


SHOP_PATHS = {"/v1/orders/{id}", "/v1/orders/{id}/tracking"}


async def openapi(bridge) -> dict:
    status, document, _ = await bridge.json("GET", "/openapi.json")
    assert status == 200
    return document


async def paths(bridge) -> set[str]:
    return set((await openapi(bridge))["paths"])


async def test_two_instances_on_one_redis_work_word_for_word(
    users_server: int, echo_server: int, shop_server: int, monkeypatch, tmp_path: Path
):
    """The README's "Several instances" block: its own redis-server, two `bridge serve`."""
    use_dev_credentials(monkeypatch)
    redis_port, first, second = free_port(), free_port(), free_port()
    store = f"redis://127.0.0.1:{redis_port}/0"
    config = parse_yaml("two-instances.yaml", (ROOT / "examples/two-instances.yaml").read_text())
    config["protos"] = {"include": [str(PROTOS)], "store": store}
    config["rate_limits"]["store"] = config["cache"]["store"] = store
    config["upstreams"]["users"]["targets"] = [f"127.0.0.1:{users_server}"]
    config["upstreams"]["echo"]["targets"] = [f"127.0.0.1:{echo_server}"]
    path = tmp_path / "two-instances.yaml"
    path.write_text(yaml.safe_dump(config))
    script = tour_script("### Try it: two instances on one machine")
    for old, new in [
        ("examples/two-instances.yaml", str(path)), ("6379", str(redis_port)),
        ("8081", str(first)), ("8082", str(second)), ("50053", str(shop_server)),
    ]:  # fmt: skip
        assert old in script, old
        script = script.replace(old, new)
    try:
        text = await bash(script, timeout=90)
    finally:  # the block stops its own processes; a failed run must not leave Redis behind
        await bash(f"redis-cli -p {redis_port} shutdown nosave 2>/dev/null; true")
    assert "registered 'shop': demo.shop.v1.OrderService" in text, text
    order = json.loads(next(line for line in text.splitlines() if '"item"' in line))
    assert order["item"] == "teapot", text  # served by the instance it was not registered on
    codes = re.findall(rf"^(?:{first}|{second}): (\d+)$", text, re.MULTILINE)
    assert codes == ["200"] * 5 + ["429"], text  # one burst of 5 across both instances
    assert re.findall(r"^x-cache: (\w+)", text, re.MULTILINE | re.IGNORECASE) == ["MISS", "HIT"]
    ready = json.loads(next(line for line in text.splitlines() if line.startswith('{"ready"')))
    assert ready["ready"] and ready["stores"][store]["reachable"], ready
    assert "removed 'shop'" in text, text
