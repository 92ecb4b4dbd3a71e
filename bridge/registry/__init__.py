"""The registry: compiled protos -> immutable snapshots, swapped by a single reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from google.protobuf import descriptor_pb2

from bridge.policy import Chains
from bridge.registry.compiler import CompileError, Diagnostic, compile_protos, find_proto_files
from bridge.registry.snapshot import (
    INCLUDE,
    JsonShape,
    ProtoSet,
    Snapshot,
    SnapshotError,
    build_snapshot,
)

__all__ = [
    "CompileError",
    "JsonShape",
    "ProtoSet",
    "Registry",
    "Snapshot",
    "SnapshotError",
    "build_snapshot",
    "load_includes",
]


class Registry:
    """Holds the live snapshot; readers take ``registry.snapshot`` once per request.

    ``chains`` gives every method of every snapshot built for it its call path; ``admit``
    refuses a run-time snapshot (a SnapshotError) whose routes collide with the config's own.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        chains: Chains | None = None,
        admit: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.chains = chains
        self.admit = admit


async def load_includes(entries: tuple[Path, ...]) -> ProtoSet:
    """Compile the config's ``protos.include`` files and folders into one proto set."""
    roots: list[Path] = []
    names: list[str] = []
    for entry in entries:
        if not entry.exists():
            raise CompileError(
                [Diagnostic(str(entry), 0, 0, "protos.include: no such file or folder")]
            )
        root, found = find_proto_files(entry)
        roots.append(root)
        names.extend(found)
    if not names:
        return ProtoSet(INCLUDE, descriptor_pb2.FileDescriptorSet(), frozenset())
    files = await compile_protos(names, roots)
    return ProtoSet(INCLUDE, files, frozenset(names))
