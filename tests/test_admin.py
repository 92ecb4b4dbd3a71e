"""The admin API (SPEC 5): the token, the body limit, registering, imports, errors, conflicts."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
from google.protobuf import json_format

from tests.conftest import StartBridge, demo_config
from tests.teams import AUTH, TOKEN, TeamServer, admin, admin_config, register

TYPES: Final = """\
syntax = "proto3";
package acme.shop.v1;
import "google/protobuf/timestamp.proto";
message Money { string currency = 1; int64 units = 2; }
message Item { string sku = 1; Money price = 2; google.protobuf.Timestamp added = 3; }
"""

CART: Final = """\
syntax = "proto3";
package acme.shop.v1;
import "google/api/annotations.proto";
import "acme/shop/v1/types.proto";
message GetCartRequest { string name = 1; }
message AddItemRequest { string cart = 1; Item item = 2; }
message Cart { string name = 1; repeated Item items = 2; }
service CartService {
  rpc GetCart(GetCartRequest) returns (Cart) {
    option (google.api.http) = { get: "/v1/{name=carts/*}" };
  }
  rpc AddItem(AddItemRequest) returns (Cart) {
    option (google.api.http) = { post: "/v1/{cart=carts/*}/items" body: "item" };
  }
}
"""

SHOP: Final = {"acme/shop/v1/types.proto": TYPES, "acme/shop/v1/cart.proto": CART}
TINY: Final = {"acme/tiny/v1/tiny.proto": 'syntax = "proto3";\npackage acme.tiny.v1;\n'}

ADMIN_CALLS: Final = [
    ("POST", "/admin/protos"),
    ("GET", "/admin/protos"),
    ("GET", "/admin/protos/shop"),
    ("DELETE", "/admin/protos/shop"),
    ("GET", "/admin/routes"),
    ("POST", "/admin/upstreams/shop/refresh"),
]


async def get_cart(request: Any, context: Any) -> dict[str, Any]:
    item = {
        "sku": "book",
        "price": {"currency": "EUR", "units": "12"},
        "added": "2024-01-02T03:04:05Z",
    }
    return {"name": request.name, "items": [item]}


async def add_item(request: Any, context: Any) -> dict[str, Any]:
    return {"name": request.cart, "items": [json_format.MessageToDict(request.item)]}


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[TeamServer]:
    team = await TeamServer(tmp_path / "team").start()
    await team.deploy(
        SHOP,
        {
            "acme.shop.v1.CartService/GetCart": get_cart,
            "acme.shop.v1.CartService/AddItem": add_item,
        },
    )
    yield team
    await team.stop()


@pytest.mark.parametrize(("verb", "path"), ADMIN_CALLS)
async def test_admin_api_is_off_without_a_token(start_bridge: StartBridge, verb, path):
    config = admin_config()
    del config["admin"]
    bridge = await start_bridge(config)
    status, body, _ = await bridge.json(verb, path, headers=AUTH, json={})
    assert status == 404 and body["code"] == 5, body


async def test_every_admin_call_needs_the_bearer_token(start_bridge: StartBridge):
    bridge = await start_bridge(admin_config())
    refused = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}é"},
    ]
    for verb, path in ADMIN_CALLS:
        for headers in refused:
            status, body, resp_headers = await bridge.json(verb, path, headers=headers, json={})
            assert (status, body["code"]) == (401, 16), (verb, path, headers, body)
            assert resp_headers["WWW-Authenticate"].startswith("Bearer")
    assert await admin(bridge, "GET", "/admin/protos") == (200, {"protos": []})

    # Bytes that are not UTF-8 in the header are refused too, not a crash.
    host, port = bridge.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /admin/protos HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"401", status_line


async def test_admin_requests_have_their_own_body_limit(
    start_bridge: StartBridge, shop, tmp_path: Path
):
    padded = {**SHOP, "acme/shop/v1/types.proto": TYPES + "// " + "x" * 6000 + "\n"}
    small_api = await start_bridge(admin_config(tmp_path / "a", limits={"max_body": "1KiB"}))
    assert small_api.settings.limits.admin_max_body == 16 * 1024 * 1024  # the default
    status, reply = await register(small_api, "shop", padded, shop.target)
    assert status == 201, reply

    small_admin = await start_bridge(
        admin_config(tmp_path / "b", limits={"admin_max_body": "4KiB"})
    )
    status, reply = await register(small_admin, "shop", padded, shop.target)
    assert (status, reply["code"]) == (413, 8), reply
    assert await admin(small_admin, "GET", "/admin/protos") == (200, {"protos": []})
    status, reply = await register(small_admin, "shop", SHOP, shop.target)
    assert status == 201, reply

    huge = {"acme/big/v1/big.proto": 'syntax = "proto3";\n// ' + "x" * (16 * 1024 * 1024) + "\n"}
    body = json.dumps({"name": "big", "files": huge, "targets": ["127.0.0.1:1"]}).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    status, reply, _ = await small_api.json(
        "POST", "/admin/protos", data=io.BytesIO(body), headers=headers
    )
    assert (status, reply["code"]) == (413, 8), reply  # over the 16MiB default


async def test_a_multi_file_package_is_live_at_once(start_bridge: StartBridge, shop):
    bridge = await start_bridge(admin_config())
    status, reply = await register(bridge, "shop", SHOP, shop.target)
    assert status == 201, reply
    assert reply["name"] == "shop"
    assert reply["services"] == ["acme.shop.v1.CartService"]
    assert reply["methods"] == [
        "acme.shop.v1.CartService/AddItem",
        "acme.shop.v1.CartService/GetCart",
    ]
    routes = {(r["verb"], r["path"], r["method"]) for r in reply["routes"]}
    assert routes == {
        ("GET", "/v1/{name=carts/*}", "acme.shop.v1.CartService/GetCart"),
        ("POST", "/v1/{cart=carts/*}/items", "acme.shop.v1.CartService/AddItem"),
        ("POST", "/acme.shop.v1.CartService/GetCart", "acme.shop.v1.CartService/GetCart"),
        ("POST", "/acme.shop.v1.CartService/AddItem", "acme.shop.v1.CartService/AddItem"),
    }

    status, body, _ = await bridge.json("GET", "/v1/carts/c1")
    assert status == 200, body
    assert body["name"] == "carts/c1"
    assert body["items"][0] == {
        "sku": "book",
        "price": {"currency": "EUR", "units": "12"},
        "added": "2024-01-02T03:04:05Z",
    }
    status, body, _ = await bridge.json("POST", "/v1/carts/c2/items", json={"sku": "pen"})
    assert status == 200 and body["items"][0]["sku"] == "pen", body

    status, listing = await admin(bridge, "GET", "/admin/protos")
    item = {
        "name": "shop",
        "targets": [shop.target],
        "files": sorted(SHOP),
        "services": ["acme.shop.v1.CartService"],
    }
    assert listing == {"protos": [item]}
    status, shown = await admin(bridge, "GET", "/admin/protos/shop")
    assert status == 200 and shown["files"] == SHOP and shown["routes"] == reply["routes"]
    status, table = await admin(bridge, "GET", "/admin/routes")
    mine = {(r["verb"], r["path"], r["method"]) for r in table["routes"] if r["source"] == "shop"}
    assert mine == routes

    status, again = await register(bridge, "shop", SHOP, shop.target)
    assert status == 200 and again == reply


async def test_imports_resolve_among_registrations_includes_and_bundled(
    start_bridge: StartBridge, shop, tmp_path: Path
):
    corp = tmp_path / "corp" / "corp" / "audit" / "v1"
    corp.mkdir(parents=True)
    (corp / "audit.proto").write_text(
        'syntax = "proto3";\npackage corp.audit.v1;\nmessage Stamp { string by = 1; }\n'
    )
    config = admin_config(upstreams={"shop": {"targets": [shop.target]}})
    config["protos"]["include"] = [str(tmp_path / "corp")]
    bridge = await start_bridge(config)

    types = {"acme/shop/v1/types.proto": TYPES}
    status, reply = await register(bridge, "shop-types", types, upstream="shop")
    assert (status, reply["services"], reply["routes"]) == (201, [], []), reply
    # cart.proto imports types.proto, which only the earlier registration uploaded.
    status, reply = await register(
        bridge, "shop", {"acme/shop/v1/cart.proto": CART}, upstream="shop"
    )
    assert status == 201, reply
    status, body, _ = await bridge.json("GET", "/v1/carts/c9")
    assert status == 200 and body["items"][0]["price"]["units"] == "12", body

    billing = """\
        syntax = "proto3";
        package acme.billing.v1;
        import "google/api/annotations.proto";
        import "google/protobuf/empty.proto";
        import "google/rpc/status.proto";
        import "corp/audit/v1/audit.proto";
        import "acme/shop/v1/types.proto";
        message Invoice { acme.shop.v1.Money total = 1; corp.audit.v1.Stamp stamp = 2;
                          google.rpc.Status last_error = 3; }
        service Billing {
          rpc Latest(google.protobuf.Empty) returns (Invoice) {
            option (google.api.http) = { get: "/v1/invoices:latest" };
          }
        }
        """.replace("        ", "")
    status, reply = await register(
        bridge, "billing", {"acme/billing/v1/billing.proto": billing}, upstream="shop"
    )
    assert status == 201, reply
    assert reply["services"] == ["acme.billing.v1.Billing"]  # what it imports stays its owners'
    assert {
        "method": "acme.billing.v1.Billing/Latest",
        "verb": "GET",
        "path": "/v1/invoices:latest",
    } in reply["routes"]


TWO_UNKNOWN_TYPES: Final = """\
syntax = "proto3";
package acme.broken.v1;

message Thing {
  Missing gone = 1;
  string ok = 2;
  Absent also = 3;
}
"""

MISSING_SEMICOLON: Final = """\
syntax = "proto3";
package acme.broken.v1;

message Thing {
  string name = 1
  int32 size = 2;
}
"""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            TWO_UNKNOWN_TYPES,
            [(5, 3, '"Missing" is not defined.'), (7, 3, '"Absent" is not defined.')],
        ),
        (MISSING_SEMICOLON, [(6, 3, 'Expected ";".')]),
    ],
    ids=["types", "syntax"],
)
async def test_compile_errors_name_file_line_and_column(
    start_bridge: StartBridge, source, expected
):
    bridge = await start_bridge(admin_config())
    files = {
        "acme/broken/v1/thing.proto": source,
        "acme/broken/v1/api.proto": 'syntax = "proto3";\nimport "acme/broken/v1/thing.proto";\n',
    }
    status, reply = await register(bridge, "broken", files, "127.0.0.1:1")
    assert (status, reply["code"]) == (400, 3), reply
    located = [(e["file"], e["line"], e["column"], e["message"]) for e in reply["errors"]]
    importer = 'Import "acme/broken/v1/thing.proto" was not found or had errors.'
    thing = [("acme/broken/v1/thing.proto", *e) for e in expected]
    assert located == [*thing, ("acme/broken/v1/api.proto", 2, 1, importer)]
    assert "acme/broken/v1/thing.proto" in reply["message"]
    assert (await admin(bridge, "GET", "/admin/protos/broken"))[0] == 404


ESCAPING: Final = r"""
    /etc/acme.proto ../acme.proto acme/../../acme.proto acme/./x.proto acme//x.proto acme\x.proto
    C:/acme.proto acme/x.txt acme/x google/protobuf/empty.proto google/api/http.proto @acme.proto
    --include_source_info.proto""".split()


@pytest.mark.parametrize("name", ESCAPING)
async def test_file_names_that_could_escape_are_refused(start_bridge: StartBridge, name):
    bridge = await start_bridge(admin_config())
    status, reply = await register(bridge, "team", {name: 'syntax = "proto3";\n'}, "127.0.0.1:1")
    assert (status, reply["code"]) == (400, 3), reply
    assert name in reply["message"]


async def test_protoc_never_reads_an_argument_file(
    start_bridge: StartBridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # protoc reads '@FILE' as a file of more arguments: here one that adds an outside root.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.proto").write_text(
        'syntax = "proto3";\npackage secret;\n'
        "service Vault { rpc Open(Key) returns (Key); }\n"
        "message Key { string value = 1; }\n"
    )
    (tmp_path / "args.proto").write_text(f"-I{outside}\nsecret.proto\n")
    monkeypatch.chdir(tmp_path)
    bridge = await start_bridge(admin_config())
    status, reply = await register(
        bridge, "team", {"@args.proto": 'syntax = "proto3";\n'}, "127.0.0.1:1"
    )
    assert status == 400, reply
    assert "Vault" not in str(reply)


@pytest.mark.parametrize("how", ["parent", "absolute", "nested-parent"])
async def test_imports_cannot_escape_the_roots(start_bridge: StartBridge, tmp_path: Path, how):
    secret = tmp_path / "secret.proto"
    secret.write_text('syntax = "proto3";\npackage secret;\nmessage Key { string value = 1; }\n')
    target = {
        "parent": "../secret.proto",
        "absolute": str(secret),
        "nested-parent": "acme/../../../../../../../../" + str(secret).lstrip("/"),
    }[how]
    source = (
        f'syntax = "proto3";\npackage acme.esc.v1;\nimport "{target}";\n'
        "message Box { secret.Key key = 1; }\n"
    )
    bridge = await start_bridge(admin_config())
    status, reply = await register(bridge, "esc", {"acme/esc.proto": source}, "127.0.0.1:1")
    assert (status, reply["code"]) == (400, 3), reply
    assert {
        "file": "acme/esc.proto",
        "line": 3,
        "column": 1,
        "message": f'Import "{target}" was not found or had errors.',
    } in reply["errors"]


def dup_service(package: str, service: str, file_tag: str, path: str) -> str:
    return f"""\
syntax = "proto3";
package {package};
import "google/api/annotations.proto";
message {file_tag}Request {{ string id = 1; }}
service {service} {{
  rpc Get{file_tag}({file_tag}Request) returns ({file_tag}Request) {{
    option (google.api.http) = {{ get: "{path}" }};
  }}
}}
"""


async def test_conflicts_are_409_naming_both_owners(start_bridge: StartBridge, echo_server):
    bridge = await start_bridge(demo_config(1, echo_server, admin={"token": TOKEN}))
    a = {"acme/dup/v1/a.proto": dup_service("acme.dup.v1", "Dup", "A", "/v1/dup/{id}")}
    assert (await register(bridge, "team-a", a, "127.0.0.1:1"))[0] == 201

    clashes = {
        "same-service": {
            "acme/dup/v1/b.proto": dup_service("acme.dup.v1", "Dup", "B", "/v1/b/{id}")
        },
        "same-route": {
            "acme/other/v1/c.proto": dup_service("acme.other.v1", "Other", "C", "/v1/dup/{id=*}")
        },
        "same-file": {"acme/dup/v1/a.proto": dup_service("acme.dup.v1", "Dup", "E", "/v1/e/{id}")},
    }
    for name, files in clashes.items():
        status, reply = await register(bridge, name, files, "127.0.0.1:1")
        assert (status, reply["code"]) == (409, 6), (name, reply)
        assert "'team-a'" in reply["message"] and f"'{name}'" in reply["message"], reply

    include = {"acme/mine/v1/d.proto": dup_service("acme.mine.v1", "Mine", "D", "/v1/echo/{id}")}
    status, reply = await register(bridge, "team-d", include, "127.0.0.1:1")
    assert (status, reply["code"]) == (409, 6), reply
    assert "'include'" in reply["message"] and "'team-d'" in reply["message"], reply

    _, listing = await admin(bridge, "GET", "/admin/protos")
    assert [p["name"] for p in listing["protos"]] == ["team-a"]
    status, body, _ = await bridge.json("GET", "/v1/echo/still-here")
    assert status == 200 and body["message"] == "still-here", body


BAD: Final = {
    "unknown-upstream": ({"name": "t", "files": TINY, "upstream": "nope"}, "'nope'"),
    "no-upstream": ({"name": "t", "files": TINY}, "upstream"),
    "both": ({"name": "t", "files": TINY, "upstream": "u", "targets": ["127.0.0.1:1"]}, "upstream"),
    "bad-target": ({"name": "t", "files": TINY, "targets": ["no port"]}, "no port"),
    "port-zero": ({"name": "t", "files": TINY, "targets": ["h:0"]}, "port from 1 to 65535"),
    "port-too-big": ({"name": "t", "files": TINY, "targets": ["h:99999"]}, "port from 1"),
    "bad-name": ({"name": "../t", "files": TINY, "targets": ["127.0.0.1:1"]}, "../t"),
    "no-files": ({"name": "t", "files": {}, "targets": ["127.0.0.1:1"]}, "files"),
    "unknown-field": ({"name": "t", "files": TINY, "targets": ["127.0.0.1:1"], "x": 1}, "s): x"),
    "not-object": ([], "JSON object"),
}


@pytest.mark.parametrize(("body", "says"), list(BAD.values()), ids=list(BAD))
async def test_bad_registrations_are_400(start_bridge: StartBridge, body, says):
    bridge = await start_bridge(admin_config())
    status, reply = await admin(bridge, "POST", "/admin/protos", body)
    assert (status, reply["code"]) == (400, 3), reply
    assert says in reply["message"]
    status, reply, _ = await bridge.json("POST", "/admin/protos", headers=AUTH, data=b"{not json")
    assert (status, reply["code"]) == (400, 3), reply


async def test_a_name_repeated_in_an_admin_body_is_400(start_bridge: StartBridge):
    """As for every JSON a client sends: a firewall and the bridge must not read it apart."""
    bridge = await start_bridge(admin_config())
    body = b'{"name": "t", "name": "u", "files": {}, "targets": ["127.0.0.1:1"]}'
    status, reply, _ = await bridge.json("POST", "/admin/protos", headers=AUTH, data=body)
    assert (status, reply["code"]) == (400, 3), reply
    assert 'duplicate key "name"' in reply["message"]
