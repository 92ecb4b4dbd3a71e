"""Field masks in proto names (SPEC section 3): what the backend receives in update_mask, for
field names that are not lower_snake_case (tests/protos/fidelity/v1/odd_names.proto, modelled
on grpc-gateway's non_standard_names example), explicit or inferred from a PATCH body; and the
pieces alone: path resolution, the mask's target message, inference, printing masks in replies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from bridge.errors import BridgeError
from bridge.transcode.fields import FieldError
from bridge.transcode.masks import infer_paths, mask_json, mask_target, resolve_path
from bridge.transcode.response import ResponsePlan
from tests.conftest import Bridge, StartBridge
from tests.proto_service import bridge_for, fidelity_pool, message_class
from tests.ws_client import connect, status

__all__ = ["fidelity_pool"]  # a session fixture, imported so that pytest finds it

PATCH: Final = "/v1/odd/r1"
ODD_NAMES: Final = ["Num", "line_num", "langIdent", "STATUS", "en_GB", "no"]


@pytest.fixture
async def odd(start_bridge: StartBridge, fidelity_pool: descriptor_pool.DescriptorPool):
    """The bridge in front of an OddService whose every method reports the mask it got."""
    seen = message_class(fidelity_pool, "MaskSeen")

    async def report(request: Message, context: grpc.aio.ServicerContext) -> Message:
        mask = request.update_mask  # type: ignore[attr-defined]
        return seen(paths=list(mask.paths), has_mask=request.HasField("update_mask"), mask=mask)

    handlers = {f"OddService/{m}": report for m in ("Update", "UpdateRenamed", "Replace")}
    bridges: AsyncIterator[Bridge] = bridge_for(start_bridge, fidelity_pool, handlers)
    yield await anext(bridges)
    await bridges.aclose()


async def paths_seen(bridge: Bridge, method: str, path: str, body: Any = None) -> list[str]:
    got, reply, _ = await bridge.json(method, path, json=body if body is not None else {})
    assert got == 200, reply
    assert reply["hasMask"] is True, reply
    return reply["paths"]


# --- functional: what the backend receives -------------------------------------------------

INFERRED: Final = [
    pytest.param(
        {"Num": "1", "lineNum": 2, "langIdent": "x", "STATUS": "s", "enGB": 3, "no": "n"},
        ODD_NAMES,
        id="json-names",
    ),
    pytest.param(
        {"Num": "1", "line_num": 2, "en_GB": 3, "STATUS": "s"},
        ["Num", "line_num", "en_GB", "STATUS"],
        id="proto-names",
    ),
    pytest.param(
        {"part": {"subPiece": {"pieceValue": "v", "Count": 1}, "Label": "l"}},
        ["part.subPiece.piece_value", "part.subPiece.Count", "part.Label"],
        id="nested-odd-names",
    ),
    pytest.param(
        {"structField": {"key": {"nested_key": 1, "Deep": {"x": None}}, "flat": 2, "empty": {}}},
        [
            "struct_field.key.nested_key",
            "struct_field.key.Deep.x",
            "struct_field.flat",
            "struct_field.empty",
        ],
        id="into-a-struct",
    ),
    pytest.param({"valueField": {"a": {"B": [1]}}}, ["value_field.a.B"], id="into-a-value"),
    pytest.param({"valueField": 3}, ["value_field"], id="value-scalar-is-a-leaf"),
    pytest.param({"valueField": [{"a": 1}]}, ["value_field"], id="value-list-is-a-leaf"),
    pytest.param(
        {"parts": {"k": {"Label": "x"}}, "tags": ["a"], "seenAt": "2024-01-01T00:00:00Z"},
        ["parts", "tags", "seen_at"],
        id="map-repeated-and-wkt-are-leaves",
    ),
    pytest.param({"part": {}, "structField": {}}, ["part", "struct_field"], id="empty-objects"),
]


@pytest.mark.parametrize("body, expected", INFERRED)
async def test_inferred_patch_mask_is_in_proto_names(
    odd: Bridge, body: dict[str, Any], expected: list[str]
) -> None:
    assert await paths_seen(odd, "PATCH", PATCH, body) == expected


EXPLICIT: Final = [
    pytest.param("update_mask=Num,lineNum,langIdent,STATUS,enGB,no", ODD_NAMES, id="json-names"),
    pytest.param("updateMask=" + ",".join(ODD_NAMES), ODD_NAMES, id="proto-names"),
    pytest.param(
        "update_mask=part.subPiece.pieceValue,part.subPiece.Count",
        ["part.subPiece.piece_value", "part.subPiece.Count"],
        id="nested",
    ),
    pytest.param(
        "update_mask=parts.MyKey.Label,parts.k,struct_field.Any.Key",
        ["parts.MyKey.Label", "parts.k", "struct_field.Any.Key"],
        id="map-and-struct-keys-literal",
    ),
    pytest.param("update_mask=*", ["*"], id="whole-resource"),
    pytest.param("update_mask=%20Num%20,,no", ["Num", "no"], id="spaces-and-empty-paths"),
    pytest.param("update_mask=", [], id="empty-mask-is-set"),
]


@pytest.mark.parametrize("query, expected", EXPLICIT)
async def test_explicit_update_mask_is_resolved_to_proto_names(
    odd: Bridge, query: str, expected: list[str]
) -> None:
    assert await paths_seen(odd, "PATCH", f"{PATCH}?{query}", {"Num": "1"}) == expected


@pytest.mark.parametrize(
    "query, named",
    [
        pytest.param("update_mask=bogus", "bogus", id="unknown-field"),
        pytest.param("update_mask=_num", "_num", id="json-format-mangled-name"),
        pytest.param("update_mask=num", "num", id="wrong-case"),
        pytest.param("update_mask=Num.x", "has no subfields", id="below-a-scalar"),
        pytest.param("update_mask=tags.x", "has no subfields", id="below-a-repeated"),
        pytest.param("update_mask=parts.k.bogus", "bogus", id="below-a-map-value"),
        pytest.param("update_mask=part.*", "'*'", id="star-inside-a-path"),
    ],
)
async def test_unknown_mask_path_is_400_naming_it(odd: Bridge, query: str, named: str) -> None:
    got, body, _ = await odd.json("PATCH", f"{PATCH}?{query}", json={"Num": "1"})
    assert got == 400, body
    assert body["code"] == 3 and named in body["message"] and "update_mask" in body["message"]
    assert await paths_seen(odd, "PATCH", PATCH, {"Num": "1"}) == ["Num"]


async def test_custom_json_names_resolve_to_proto_names(odd: Bridge) -> None:
    body = {"ID": "i", "LineNum": 1, "status": "s", "En_GB": 2, "yes": "y", "Num": "3"}
    expected = ["id", "line_num", "STATUS", "en_GB", "no", "Num"]
    assert await paths_seen(odd, "PATCH", "/v1/renamed", body) == expected
    query = "/v1/renamed?update_mask=status,yes,LineNum,en_GB"
    assert await paths_seen(odd, "PATCH", query, {}) == ["STATUS", "no", "line_num", "en_GB"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/shelves/s1/odd:replace", id="rule-with-body-star"),
        pytest.param("/fidelity.v1.OddService/Replace", id="default-route"),
    ],
)
@pytest.mark.parametrize("key", ["updateMask", "update_mask"])
async def test_mask_in_a_whole_message_body_names_the_resource_fields(
    odd: Bridge, path: str, key: str
) -> None:
    body = {"parent": "shelves/s1", "record": {"Num": "1"}, key: "Num,langIdent,part.Label"}
    assert await paths_seen(odd, "POST", path, body) == ["Num", "langIdent", "part.Label"]


@pytest.mark.parametrize(
    "body, named",
    [
        pytest.param({"updateMask": "Num", "update_mask": "no"}, "given twice", id="both-names"),
        pytest.param({"updateMask": {"paths": ["Num"]}}, "string", id="not-a-string"),
        pytest.param({"updateMask": "parent"}, "parent", id="a-request-field"),
    ],
)
async def test_bad_mask_in_a_body_is_400(odd: Bridge, body: dict[str, Any], named: str) -> None:
    got, reply, _ = await odd.json("POST", "/v1/shelves/s1/odd:replace", json=body)
    assert got == 400 and named in reply["message"], reply


async def test_reply_prints_masks_json_format_cannot(odd: Bridge) -> None:
    """json_format raises on a FieldMask path with capitals; the reply is rendered anyway."""
    query = "update_mask=Num,line_num,part.subPiece.pieceValue,parts.MyKey"
    got, reply, _ = await odd.json("PATCH", f"{PATCH}?{query}", json={})
    assert got == 200, reply
    assert reply["mask"] == "Num,lineNum,part.subPiece.pieceValue,parts.MyKey"


async def test_websocket_calls_resolve_the_mask_too(odd: Bridge) -> None:
    async with connect(odd.url) as ws:
        message = {"body": {"Num": "1"}, "updateMask": "Num,enGB,STATUS"}
        frames = await ws.call(1, "fidelity.v1.OddService/Update", message)
        assert status(frames)["code"] == 0, frames
        assert frames[-2]["message"]["paths"] == ["Num", "en_GB", "STATUS"]
        frames = await ws.call(2, "fidelity.v1.OddService/Update", {"updateMask": "nope"})
        assert status(frames)["code"] == 3 and "nope" in status(frames)["message"]


# --- unit: the pieces ----------------------------------------------------------------------


def odd_record(pool: descriptor_pool.DescriptorPool) -> Descriptor:
    return message_class(pool, "OddRecord").DESCRIPTOR


@pytest.mark.parametrize(
    "path, expected",
    [
        pytest.param("Num", "Num", id="capitalised"),
        pytest.param("lineNum", "line_num", id="json-name"),
        pytest.param("en_GB", "en_GB", id="proto-name-mixed-case"),
        pytest.param("enGB", "en_GB", id="json-name-mixed-case"),
        pytest.param("part.subPiece.Count", "part.subPiece.Count", id="nested"),
        pytest.param("parts.a.b", None, id="map-value-has-no-field-b"),
        pytest.param("parts.key.subPiece", "parts.key.subPiece", id="into-a-map-value"),
        pytest.param("parts", "parts", id="whole-map"),
        pytest.param("struct_field.a.B.c", "struct_field.a.B.c", id="struct-keys"),
        pytest.param("valueField.x", "value_field.x", id="value-keys"),
        pytest.param("seen_at.seconds", "seen_at.seconds", id="into-a-timestamp"),
        pytest.param("*", "*", id="star"),
        pytest.param("", None, id="empty"),
        pytest.param("Num.", None, id="trailing-dot"),
        pytest.param("tags.0", None, id="repeated-index"),
        pytest.param("\ud800", None, id="lone-surrogate-is-unknown-not-a-crash"),
    ],
)
def test_resolve_path(fidelity_pool, path: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(FieldError):
            resolve_path(odd_record(fidelity_pool), path)
    else:
        assert resolve_path(odd_record(fidelity_pool), path) == expected


@pytest.mark.parametrize(
    "request_type, body, target",
    [
        pytest.param("UpdateOddRequest", "body", "OddRecord", id="body-field"),
        pytest.param("UpdateOddRequest", "*", "OddRecord", id="star-one-resource"),
        pytest.param("UpdateOddRequest", None, "OddRecord", id="no-body-one-resource"),
        pytest.param("ReplaceOddRequest", "*", "OddRecord", id="scalars-do-not-count"),
        pytest.param("MaskSeen", None, "MaskSeen", id="no-resource-field"),
        pytest.param("OddRecord", "*", "Part", id="maps-and-wkt-do-not-count"),
        pytest.param("TwoResources", "*", "TwoResources", id="two-resource-fields"),
        pytest.param("TwoResources", "name", "TwoResources", id="scalar-body-field"),
    ],
)
def test_mask_target(fidelity_pool, request_type: str, body: str | None, target: str) -> None:
    request = message_class(fidelity_pool, request_type).DESCRIPTOR
    assert mask_target(request, body).name == target


def test_inference_stops_at_protobufs_depth_in_a_struct_too(fidelity_pool) -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(150):
        deep = {"k": deep}
    with pytest.raises(BridgeError) as raised:
        infer_paths(odd_record(fidelity_pool), {"structField": deep})
    assert "deep" in raised.value.message
    shallow = {"structField": {"a": {"b": {}}, "c": []}}
    assert infer_paths(odd_record(fidelity_pool), shallow) == ["struct_field.a.b", "struct_field.c"]


@pytest.mark.parametrize(
    "paths, text",
    [
        pytest.param(["display_name", "inner.note"], "displayName,inner.note", id="snake"),
        pytest.param(["Num", "en_GB", "STATUS"], "Num,en_GB,STATUS", id="odd-kept"),
        pytest.param(["a__b", "a_1", "a_B"], "a__b,a_1,a_B", id="no-round-trip"),
        pytest.param(["_x"], "X", id="leading-underscore-as-protobuf"),
        pytest.param(["part.subPiece.piece_value"], "part.subPiece.pieceValue", id="mixed"),
        pytest.param([], "", id="empty"),
    ],
)
def test_mask_json(paths: list[str], text: str) -> None:
    assert mask_json(paths) == text


def test_reply_masks_anywhere_in_the_message(fidelity_pool) -> None:
    seen = message_class(fidelity_pool, "MaskSeen")
    plan = ResponsePlan.build(seen.DESCRIPTOR, fidelity_pool, True, False, None)
    assert plan.to_dict(seen(mask={"paths": ["STATUS"]}))["mask"] == "STATUS"
    mask = message_class(fidelity_pool, "google.protobuf.FieldMask")
    whole = ResponsePlan.build(mask.DESCRIPTOR, fidelity_pool, True, True, None)
    assert whole.to_dict(mask(paths=["Num", "a_b"])) == "Num,aB"
    assert plan.to_dict(seen(paths=["x"]))["mask"] is None  # the usual path, nulls as ever
