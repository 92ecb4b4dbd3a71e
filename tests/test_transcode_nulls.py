"""Where emit_unpopulated writes null: grpc-gateway's marshaler (protojson, EmitUnpopulated).

A table of messages rendered through `ResponsePlan`, for a proto that has every kind of
message-typed field: recursive, proto3 ``optional``, in a oneof, map values with bool and
integer keys, list items, a well-known type, and a ``response_body`` field.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from bridge.registry.compiler import compile_protos
from bridge.transcode.response import Nulls, ResponsePlan

PROTO = """
syntax = "proto3";
package t.nulls.v1;
import "google/protobuf/timestamp.proto";

message Node {
  string name = 1;
  Node next = 2;
  optional Node maybe = 3;
  oneof pick {
    Node left = 4;
    string label = 5;
  }
  map<bool, Node> by_flag = 6;
  map<int64, Node> by_number = 7;
  repeated Node items = 8;
  google.protobuf.Timestamp at = 9;
  map<string, string> tags = 10;
  Leaf leaf = 11;
}

message Leaf {
  int32 value = 1;
}
"""


@pytest.fixture(scope="module")
def types(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root: Path = tmp_path_factory.mktemp("nulls")
    (root / "nulls.proto").write_text(PROTO)
    files = asyncio.run(compile_protos(["nulls.proto"], [root]))
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    node = pool.FindMessageTypeByName("t.nulls.v1.Node")
    leaf = pool.FindMessageTypeByName("t.nulls.v1.Leaf")
    return {
        "pool": pool,
        "Node": message_factory.GetMessageClass(node),
        "Leaf": message_factory.GetMessageClass(leaf),
    }


def render(types: dict[str, Any], message: Message, **options: Any) -> Any:
    field = options.pop("field", None)
    descriptor = message.DESCRIPTOR
    plan = ResponsePlan.build(
        descriptor,
        types["pool"],
        options.pop("emit_unpopulated", True),
        options.pop("use_proto_names", False),
        descriptor.fields_by_name[field] if field else None,
    )
    return plan.to_dict(message)


def test_an_empty_message_has_null_for_each_singular_message_field(types) -> None:
    out = render(types, types["Node"]())
    assert out == {
        "name": "", "next": None, "byFlag": {}, "byNumber": {}, "items": [], "at": None,
        "tags": {}, "leaf": None,
    }  # fmt: skip
    # proto3 `optional` and oneof members stay out when unset, as in protojson
    assert not {"maybe", "left", "label"} & out.keys()


def test_nulls_reach_every_depth(types) -> None:
    Node = types["Node"]
    message = Node(
        next=Node(name="second"),
        left=Node(),
        by_flag={True: Node(name="t")},
        by_number={5: Node()},
        items=[Node(), Node(next=Node())],
        maybe=Node(),
    )
    out = render(types, message)
    assert out["next"]["name"] == "second" and out["next"]["next"] is None
    assert out["left"]["next"] is None  # a set oneof member is descended into
    assert out["maybe"]["leaf"] is None  # so is a set proto3 optional
    assert out["byFlag"]["true"]["next"] is None and out["byNumber"]["5"]["leaf"] is None
    assert out["items"][0]["next"] is None and out["items"][1]["next"]["next"] is None


def test_proto_names_and_response_body(types) -> None:
    Node, Leaf = types["Node"], types["Leaf"]
    out = render(types, Node(by_flag={False: Node()}), use_proto_names=True)
    assert out["by_flag"]["false"]["next"] is None and out["leaf"] is None
    assert render(types, Node(next=Node()), field="next")["next"] is None
    assert render(types, Node(leaf=Leaf(value=3)), field="leaf") == {"value": 3}
    items = render(types, Node(items=[Node()]), field="items")
    assert items[0]["next"] is None


def test_no_plan_where_no_null_can_appear(types) -> None:
    assert Nulls.of(types["Leaf"].DESCRIPTOR, False) is None  # no message fields: no cost
    assert render(types, types["Node"](), emit_unpopulated=False) == {}
