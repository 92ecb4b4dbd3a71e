"""The ``.proto`` comments of a snapshot, by symbol: the OpenAPI document's descriptions.

Comments come from ``source_code_info``, which the compiler keeps (protoc's
``--include_source_info``); files found by reflection may lack it and get no descriptions.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2

from bridge.registry.snapshot import Snapshot

# Field numbers of descriptor.proto: where a source location's path steps into a child.
_FILE_CHILDREN: Final = {4: "message", 5: "enum", 6: "service"}
_MESSAGE_CHILDREN: Final = {2: "field", 3: "message", 4: "enum"}
_ENUM_VALUES: Final = 2
_SERVICE_METHODS: Final = 2


def comment_index(snapshot: Snapshot) -> dict[str, str]:
    """Each commented symbol's comment by full name (``pkg.Msg``, ``pkg.Msg.field``,
    ``pkg.Enum.VALUE``, ``pkg.Service``, ``pkg.Service.Method``), from every file that kept its
    ``source_code_info``. Built once per document, which app.py builds once per snapshot."""
    index: dict[str, str] = {}
    for proto_set in snapshot.sets:
        for file in proto_set.files.file:
            for location in file.source_code_info.location:
                text = _comment(location)
                name = _symbol(file, tuple(location.path)) if text else None
                if name is not None:
                    index.setdefault(name, text)
    return index


def _comment(location: descriptor_pb2.SourceCodeInfo.Location) -> str:
    """The leading comment, else the trailing one, with protoc's line breaks joined."""
    raw = location.leading_comments or location.trailing_comments
    lines = [line.strip() for line in raw.strip().splitlines()]
    return "\n".join(lines).replace("\n\n", "\0").replace("\n", " ").replace("\0", "\n\n")


def _symbol(file: descriptor_pb2.FileDescriptorProto, path: tuple[int, ...]) -> str | None:
    """The full name of the symbol a source path points at; None for anything else."""
    if len(path) < 2 or path[0] not in _FILE_CHILDREN:
        return None
    kind = _FILE_CHILDREN[path[0]]
    node: Any = getattr(file, {"message": "message_type", "enum": "enum_type",
                               "service": "service"}[kind])[path[1]]  # fmt: skip
    name = f"{file.package}.{node.name}" if file.package else node.name
    rest = path[2:]
    while rest:
        if len(rest) < 2:
            return None
        step, index, rest = rest[0], rest[1], rest[2:]
        if kind == "message" and step in _MESSAGE_CHILDREN:
            kind = _MESSAGE_CHILDREN[step]
            node = getattr(node, {"field": "field", "message": "nested_type",
                                  "enum": "enum_type"}[kind])[index]  # fmt: skip
        elif (kind, step) in (("enum", _ENUM_VALUES), ("service", _SERVICE_METHODS)):
            node = (node.value if kind == "enum" else node.method)[index]
            kind = "leaf"
        else:
            return None
        name = f"{name}.{node.name}"
    return name
