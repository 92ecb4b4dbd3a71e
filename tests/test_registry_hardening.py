"""Registrations that cannot be served are a 400 (or a 503 for the host's trouble), never a 500.

Each case goes through the real admin API of a bridge that already serves a registration, and
checks afterwards that the registry is exactly as it was: the same listing, route table and
stored files, and the earlier registration still answering.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from google.protobuf import descriptor_pb2

from bridge.registry.reflection import _ordered
from bridge.registry.upload import MAX_NAME_BYTES, MAX_SEGMENT_BYTES, MAX_TARGETS
from tests.conftest import Bridge, StartBridge
from tests.teams import (
    PING,
    PING_FILE,
    TeamServer,
    admin,
    admin_config,
    ping,
    register,
    registry_state,
)

EMPTY: Final = 'syntax = "proto3";\npackage acme.empty.v1;\n'
DEEP_FILE: Final = "acme/deep/v1/deep.proto"


def chain(levels: int) -> str:
    """A service whose message type nests ``levels`` message types, one field each."""
    messages = "".join(
        f"message M{i} {{ M{i + 1} next = 1; string s = 2; }}\n" for i in range(levels)
    )
    return (
        f'syntax = "proto3";\npackage acme.deep.v1;\nimport "google/api/annotations.proto";\n'
        f"{messages}message M{levels} {{ string s = 1; }}\n"
        "service Deep {\n  rpc Get(M0) returns (M0) {\n"
        '    option (google.api.http) = { patch: "/deep" body: "*" };\n  }\n}\n'
    )


@dataclass
class Served:
    bridge: Bridge
    store: Path
    team: TeamServer

    async def state(self) -> tuple[Any, ...]:
        return await registry_state(self.bridge, self.store)

    async def assert_unchanged(self, before: tuple[Any, ...]) -> None:
        assert await self.state() == before
        status, body, _ = await self.bridge.json("GET", "/ping/still")
        assert (status, body) == (200, {"id": "still"}), body


@pytest.fixture
async def served(start_bridge: StartBridge, tmp_path: Path) -> AsyncIterator[Served]:
    """A bridge with the admin API and a store, already serving the 'ping' registration."""
    team = await TeamServer(tmp_path / "team").start()
    await team.deploy({PING_FILE: PING}, {"acme.ping.v1.Ping/Get": ping})
    store = tmp_path / "store"
    bridge = await start_bridge(admin_config(store))
    status, reply = await register(bridge, "ping", {PING_FILE: PING}, team.target)
    assert status == 201, reply
    yield Served(bridge, store, team)
    await team.stop()


# (file names -> sources, a fragment the 400's message must hold)
REFUSED: Final = {
    "nul-in-name": ({"a\x00b.proto": EMPTY}, "'a\\x00b.proto' holds \\x00"),
    "name-of-300-characters": ({"a" * 294 + ".proto": EMPTY}, "a segment of 300 bytes"),
    "file-and-its-folder": (
        {"a.proto": EMPTY, "a.proto/b.proto": EMPTY},
        "'a.proto/b.proto' needs a folder 'a.proto', which is also a file",
    ),
    "soh-in-name": ({"a\x01.proto": EMPTY}, "holds \\x01"),
    "newline-in-name": ({"acme/x\ny.proto": EMPTY}, "'acme/x\\x0ay.proto' holds \\x0a"),
    "tab-in-name": ({"a\tb.proto": EMPTY}, "holds \\x09"),
    "del-in-name": ({"a\x7f.proto": EMPTY}, "holds \\x7f"),
    "c1-control-in-name": ({"a\x85.proto": EMPTY}, "holds \\x85"),
    # A lone surrogate cannot be UTF-8: the admin API's JSON reader refuses it (as it does
    # for every JSON a client sends), before the upload's own check of names and sources.
    "lone-surrogate-in-name": ({"a\ud800.proto": EMPTY}, "not valid JSON: no low surrogate"),
    "lone-surrogate-in-source": (
        {"acme/s.proto": EMPTY + "// \udfff\n"},
        "not valid JSON: invalid high surrogate",
    ),
    "segment-over-255-bytes-in-utf8": (
        {"acme/" + "é" * 130 + ".proto": EMPTY},
        f"a segment of 266 bytes in UTF-8; at most {MAX_SEGMENT_BYTES}",
    ),
    "name-over-1024-bytes": (
        {"/".join(["d" * 200] * 6) + ".proto": EMPTY},
        f"is 1211 bytes long in UTF-8; at most {MAX_NAME_BYTES}",
    ),
    "chain-of-450-message-types": (
        {DEEP_FILE: chain(450)},
        "acme.deep.v1.Deep/Get: message type acme.deep.v1.M0 nests message fields too deeply",
    ),
}


@pytest.mark.parametrize(("files", "fragment"), REFUSED.values(), ids=REFUSED.keys())
async def test_an_upload_that_cannot_be_served_is_a_400_that_changes_nothing(
    served: Served, files: dict[str, str], fragment: str
):
    before = await served.state()
    status, reply = await register(served.bridge, "hostile", files, served.team.target)
    assert (status, reply["code"]) == (400, 3), reply
    assert fragment in reply["message"], reply["message"]
    assert set(reply) >= {"code", "message", "details"}
    await served.assert_unchanged(before)
    # The same name with sources that can be served is accepted at once.
    status, reply = await register(served.bridge, "hostile", {"acme/ok.proto": EMPTY}, "x:1")
    assert status == 201, reply


# (the registration's fields besides its name, a fragment the 400's message must hold)
REFUSED_BODIES: Final = {
    "another-registrations-own-upstream": (
        {"files": {"acme/b.proto": EMPTY}, "upstream": "registration:ping"},
        "upstream 'registration:ping' is not configured",
    ),
    "65-targets": (
        {"files": {"acme/b.proto": EMPTY}, "targets": [f"127.0.0.1:{1000 + i}" for i in range(65)]},
        f"targets: at most {MAX_TARGETS} per registration",
    ),
}


@pytest.mark.parametrize(("fields", "fragment"), REFUSED_BODIES.values(), ids=REFUSED_BODIES.keys())
async def test_a_registration_that_cannot_be_served_is_a_400_that_changes_nothing(
    served: Served, fields: dict[str, Any], fragment: str
):
    before = await served.state()
    status, reply = await admin(served.bridge, "POST", "/admin/protos", {"name": "x", **fields})
    assert (status, reply["code"]) == (400, 3), reply
    assert fragment in reply["message"], reply["message"]
    await served.assert_unchanged(before)
    # Removing 'ping' would have left a borrower of its upstream answering 500s.
    assert (await admin(served.bridge, "DELETE", "/admin/protos/ping"))[0] == 200


@pytest.mark.parametrize("first_is_the_folder", [True, False], ids=["file-first", "folder-first"])
async def test_a_file_may_not_be_the_folder_of_another_registrations_file(
    served: Served, first_is_the_folder: bool
):
    as_file = {"lib.proto": EMPTY}
    as_folder = {"lib.proto/inner.proto": EMPTY.replace("empty", "inner")}
    first, second = (as_file, as_folder) if first_is_the_folder else (as_folder, as_file)
    assert (await register(served.bridge, "first", first, "x:1"))[0] == 201
    before = await served.state()
    status, reply = await register(served.bridge, "second", second, "x:1")
    assert (status, reply["code"]) == (400, 3), reply
    assert "'lib.proto'" in reply["message"] and "'first'" in reply["message"], reply
    await served.assert_unchanged(before)
    # Every later compile writes the other registrations' files together: it still works.
    status, reply = await register(served.bridge, "third", {"acme/third.proto": EMPTY}, "x:1")
    assert status == 201, reply


async def test_a_deep_but_accepted_chain_is_served_and_documented(served: Served, tmp_path: Path):
    team = await TeamServer(tmp_path / "deep-team").start()

    async def get(request: Any, context: Any) -> dict[str, Any]:
        return {"s": "top", "next": {"next": {"s": "third"}}}

    try:
        await team.deploy({DEEP_FILE: chain(200)}, {"acme.deep.v1.Deep/Get": get})
        status, reply = await register(served.bridge, "deep", {DEEP_FILE: chain(200)}, team.target)
        assert status == 201, reply
        status, document, _ = await served.bridge.json("GET", "/openapi.json")
        assert status == 200, document
        schemas = document["components"]["schemas"]
        assert {"acme.deep.v1.M0", "acme.deep.v1.M200"} <= set(schemas)
        status, body, _ = await served.bridge.json("PATCH", "/deep", json={"s": "x"})
        assert status == 200, body
        assert body["s"] == "top" and body["next"]["next"]["s"] == "third", body
    finally:
        await team.stop()
    status, body, _ = await served.bridge.json("GET", "/ping/after")
    assert (status, body) == (200, {"id": "after"})


async def test_a_store_that_cannot_be_written_is_a_503_that_changes_nothing(served: Served):
    before = await served.state()
    kept = served.store.with_name("store-away")
    served.store.rename(kept)
    served.store.write_text("a file where the store's folder should be\n")
    try:
        listing, routes, _ = before
        for call in (
            register(served.bridge, "ping", {PING_FILE: PING}, "127.0.0.1:1"),
            register(served.bridge, "new", {"acme/new.proto": EMPTY}, "x:1"),
            admin(served.bridge, "DELETE", "/admin/protos/ping"),
        ):
            status, reply = await call
            assert (status, reply["code"]) == (503, 14), reply
            assert f"protos.store {served.store} cannot be written" in reply["message"], reply
            assert await registry_state(served.bridge) == (listing, routes, None)
            status, body, _ = await served.bridge.json("GET", "/ping/during")
            assert (status, body) == (200, {"id": "during"}), body
    finally:
        served.store.unlink()
        kept.rename(served.store)
    await served.assert_unchanged(before)
    assert (await register(served.bridge, "new", {"acme/new.proto": EMPTY}, "x:1"))[0] == 201


async def test_no_temporary_folder_for_the_compile_is_a_503_that_changes_nothing(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    before = await served.state()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    status, reply = await register(served.bridge, "new", {"acme/new.proto": EMPTY}, "x:1")
    assert (status, reply["code"]) == (503, 14), reply
    assert "cannot register 'new' now" in reply["message"], reply
    await served.assert_unchanged(before)
    monkeypatch.undo()
    assert (await register(served.bridge, "new", {"acme/new.proto": EMPTY}, "x:1"))[0] == 201


def test_files_found_by_reflection_are_ordered_whatever_the_length_of_their_import_chain():
    """A server may send a dependency chain longer than Python's recursion limit."""
    count = 3000
    files = {
        f"f{i}.proto": descriptor_pb2.FileDescriptorProto(
            name=f"f{i}.proto", dependency=[f"f{i + 1}.proto"] if i + 1 < count else []
        )
        for i in range(count)
    }
    ordered = [f.name for f in _ordered(files).file]
    assert ordered == [f"f{i}.proto" for i in reversed(range(count))]
