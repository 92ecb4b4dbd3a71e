"""``bridge protos add|list|remove`` run as a user would, against a bridge in this process."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.conftest import Bridge, StartBridge
from tests.teams import TOKEN, TeamServer, admin, admin_config

TYPES: Final = """\
syntax = "proto3";
package acme.shop.v1;
message Money { string currency = 1; int64 units = 2; }
"""

CART: Final = """\
syntax = "proto3";
package acme.shop.v1;
import "google/api/annotations.proto";
import "acme/shop/v1/types.proto";
message GetCartRequest { string name = 1; }
message Cart { string name = 1; Money total = 2; }
service CartService {
  rpc GetCart(GetCartRequest) returns (Cart) {
    option (google.api.http) = { get: "/v1/{name=carts/*}" };
  }
}
"""

BROKEN: Final = """\
syntax = "proto3";
package acme.broken.v1;

message Thing {
  Missing gone = 1;
}
"""

FILES: Final = {"acme/shop/v1/types.proto": TYPES, "acme/shop/v1/cart.proto": CART}


async def get_cart(request: Any, context: Any) -> dict[str, Any]:
    return {"name": request.name, "total": {"currency": "EUR", "units": "3"}}


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[TeamServer]:
    team = await TeamServer(tmp_path / "team").start()
    await team.deploy(FILES, {"acme.shop.v1.CartService/GetCart": get_cart})
    yield team
    await team.stop()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A team's proto root on disk, with one broken file besides the good ones."""
    root = tmp_path / "proto"
    for name, text in {**FILES, "acme/broken/v1/thing.proto": BROKEN}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


async def bridge_cli(
    *args: str, cwd: Path, token: str | None = TOKEN, admin_url: str | None = None
) -> tuple[int, str, str]:
    """Run ``bridge protos ...`` in a child process; the event loop keeps serving meanwhile."""
    env = {k: v for k, v in os.environ.items() if k != "BRIDGE_ADMIN_TOKEN"}
    if token is not None:
        env["BRIDGE_ADMIN_TOKEN"] = token
    argv = [*args, "--admin", admin_url] if admin_url else list(args)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        "protos",
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_add_list_remove(start_bridge: StartBridge, shop: TeamServer, root: Path):
    bridge = await start_bridge(admin_config())
    cart = str(root / "acme/shop/v1/cart.proto")  # a path, named relative to -I as protoc does

    add = ["add", cart, "--name", "shop", "--target", shop.target, "-I", str(root)]

    code, out, err = await bridge_cli(*add, cwd=root.parent, admin_url=bridge.url)
    assert code == 0, err
    assert out.splitlines() == [
        "registered 'shop': acme.shop.v1.CartService",
        "  POST    /acme.shop.v1.CartService/GetCart  ->  acme.shop.v1.CartService/GetCart",
        "  GET     /v1/{name=carts/*}  ->  acme.shop.v1.CartService/GetCart",
    ]
    # Only cart.proto was named; the local import it needs was uploaded with it.
    status, shown = await admin(bridge, "GET", "/admin/protos/shop")
    assert status == 200 and shown["files"] == FILES
    status, body, _ = await bridge.json("GET", "/v1/carts/c7")
    assert (status, body) == (200, {"name": "carts/c7", "total": {"currency": "EUR", "units": "3"}})

    code, out, err = await bridge_cli(*add, cwd=root.parent, admin_url=bridge.url)
    assert code == 0 and out.startswith("replaced 'shop'"), (out, err)

    code, out, err = await bridge_cli("list", cwd=root, admin_url=bridge.url)
    assert (code, out) == (0, f"shop  ({shop.target})  acme.shop.v1.CartService\n"), err

    code, out, err = await bridge_cli("remove", "shop", cwd=root, admin_url=bridge.url)
    assert (code, out) == (0, "removed 'shop'\n"), err
    assert (await bridge.json("GET", "/v1/carts/c7"))[0] == 404
    code, out, err = await bridge_cli("list", cwd=root, admin_url=bridge.url)
    assert (code, out) == (0, "no registrations\n"), err


async def test_the_root_defaults_to_the_current_folder(
    start_bridge: StartBridge, shop: TeamServer, root: Path
):
    bridge = await start_bridge(admin_config(upstreams={"shop": {"targets": [shop.target]}}))
    code, out, err = await bridge_cli(
        "add",
        "acme/shop/v1/cart.proto",
        "--name",
        "cart",
        "--upstream",
        "shop",
        cwd=root,
        admin_url=bridge.url,
    )
    assert code == 0 and "GET     /v1/{name=carts/*}" in out, err
    assert (await admin(bridge, "GET", "/admin/protos/cart"))[1]["upstream"] == "shop"
    assert (await bridge.json("GET", "/v1/carts/x"))[0] == 200


async def test_errors_are_one_readable_report(start_bridge: StartBridge, root: Path):
    bridge = await start_bridge(admin_config())
    url = bridge.url

    code, out, err = await bridge_cli(
        "add",
        "acme/broken/v1/thing.proto",
        "--name",
        "broken",
        "--target",
        "127.0.0.1:1",
        cwd=root,
        admin_url=url,
    )
    assert code == 2 and out == ""
    assert err.startswith("bridge: HTTP 400: ")
    assert '  acme/broken/v1/thing.proto:5:3: "Missing" is not defined.' in err.splitlines()
    assert err.count('"Missing" is not defined') == 1, err  # once, not in the message too
    assert "Traceback" not in err

    cases = [
        (["list"], None, "set BRIDGE_ADMIN_TOKEN"),
        (["list"], "wrong", "HTTP 401"),
        (["remove", "nothing"], TOKEN, "HTTP 404: no registration named 'nothing'"),
        (
            ["add", "/etc/hostname", "--name", "x", "--target", "127.0.0.1:1"],
            TOKEN,
            "is not under the proto root",
        ),
        (["add", "acme/none.proto", "--name", "x", "--target", "127.0.0.1:1"], TOKEN, "none.proto"),
    ]
    cases.append((["list", "--admin", "http://127.0.0.1:1"], TOKEN, "cannot reach the bridge"))
    results = await asyncio.gather(
        *(
            bridge_cli(*args, cwd=root, token=token, admin_url=None if "--admin" in args else url)
            for args, token, _ in cases
        )
    )
    for (args, _, says), (code, _out, err) in zip(cases, results, strict=True):
        assert code == 2 and says in err and "Traceback" not in err, (args, err)


async def test_a_conflict_names_both_registrations(start_bridge: StartBridge, root: Path):
    bridge: Bridge = await start_bridge(admin_config())
    for name, code_wanted in (("first", 0), ("second", 2)):
        code, out, err = await bridge_cli(
            "add",
            "acme/shop/v1/cart.proto",
            "--name",
            name,
            "--target",
            "127.0.0.1:1",
            cwd=root,
            admin_url=bridge.url,
        )
        assert code == code_wanted, (name, out, err)
    assert err.startswith("bridge: HTTP 409: ") and "'first'" in err and "'second'" in err, err
