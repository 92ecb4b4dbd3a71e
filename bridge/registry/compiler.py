"""Compile .proto sources into a FileDescriptorSet with grpcio-tools' protoc.

protoc runs in a worker process (``python -m grpc_tools.protoc``) so that a compile never blocks
the event loop and its diagnostics can be captured as text and parsed into file/line/column.
Only the given include roots and the bundled ``google/*`` protos are visible to it.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Final

from google.protobuf import descriptor_pb2

_DIAGNOSTIC: Final = re.compile(
    r"^(?P<file>[^:\n]+?):(?P<line>\d+):(?P<column>\d+): (?P<message>.*)$"
)
_FILE_ONLY: Final = re.compile(r"^(?P<file>[^:\n]+?\.proto): (?P<message>.*)$")


@dataclass(frozen=True)
class Diagnostic:
    """One protoc error, located when protoc says where."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


class CompileError(Exception):
    """protoc rejected the sources; ``diagnostics`` says where and why."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__("; ".join(str(d) for d in self.diagnostics) or "protoc failed")


BUNDLED_PACKAGES: Final = ("google/api", "google/rpc", "google/type", "google/longrunning")


@cache
def bundled_roots() -> tuple[Path, ...]:
    """The include roots holding google/protobuf/* (grpcio-tools) and google/api, rpc, type.

    googleapis-common-protos installs its .proto files straight into site-packages, so the
    compiler gets a folder of links to just those packages rather than all of site-packages.
    """
    import google.api.annotations_pb2 as annotations

    protobuf_root = Path(str(resources.files("grpc_tools") / "_proto"))
    site = Path(annotations.__file__).resolve().parent.parent.parent
    curated = Path(tempfile.mkdtemp(prefix="bridge-googleapis-"))
    atexit.register(shutil.rmtree, curated, ignore_errors=True)
    (curated / "google").mkdir()
    for package in BUNDLED_PACKAGES:
        if (site / package).is_dir():
            (curated / package).symlink_to(site / package, target_is_directory=True)
    return (protobuf_root, curated)


def parse_diagnostics(stderr: str) -> list[Diagnostic]:
    """Turn protoc's stderr into diagnostics; lines it does not locate keep the file only."""
    found = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line or line.startswith("warning:") or ": warning:" in line:
            continue
        if m := _DIAGNOSTIC.match(line):
            found.append(
                Diagnostic(m["file"], int(m["line"]), int(m["column"]), m["message"].strip())
            )
        elif m := _FILE_ONLY.match(line):
            found.append(Diagnostic(m["file"], 0, 0, m["message"].strip()))
        else:
            found.append(Diagnostic("", 0, 0, line))
    return found


def _relative(diagnostic: Diagnostic, roots: Sequence[Path]) -> Diagnostic:
    """Name the file as the user did, relative to its root, not by protoc's disk path."""
    for root in roots:
        prefix = f"{root}/"
        if diagnostic.file.startswith(prefix):
            name = diagnostic.file[len(prefix) :]
            return Diagnostic(name, diagnostic.line, diagnostic.column, diagnostic.message)
    return diagnostic


def _protoc_args(files: Sequence[str], roots: Sequence[Path], out: str) -> list[str]:
    includes = [f"-I{root}" for root in (*roots, *bundled_roots())]
    return [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        *includes,
        "--include_imports",
        "--include_source_info",  # keeps the .proto comments for the OpenAPI descriptions
        f"--descriptor_set_out={out}",
        *files,
    ]


async def compile_protos(
    files: Sequence[str], roots: Sequence[Path]
) -> descriptor_pb2.FileDescriptorSet:
    """Compile ``files`` (names relative to one of ``roots``) with their imports.

    The result lists every file, dependencies first, as protoc's ``--include_imports`` does.
    """
    # Made and removed in a thread: no disk I/O on the event loop, which serves calls meanwhile.
    tmp = await asyncio.to_thread(tempfile.mkdtemp, prefix="bridge-protoc-")
    try:
        out = os.path.join(tmp, "set.pb")
        proc = await asyncio.create_subprocess_exec(
            *_protoc_args(files, roots, out),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate()
        if proc.returncode != 0:
            text = (stderr or stdout).decode("utf-8", "replace")
            found = [_relative(d, roots) for d in parse_diagnostics(text)]
            # A protoc that died (killed, out of memory) says nothing: name the exit at least.
            raise CompileError(found or [Diagnostic("", 0, 0, f"protoc exited {proc.returncode}")])
        data = await asyncio.to_thread(Path(out).read_bytes)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
    return descriptor_pb2.FileDescriptorSet.FromString(data)


def include_root(entry: Path) -> Path:
    """The import root of an include entry: a folder itself, or the folder of a file."""
    return entry.parent if entry.is_file() else entry


def find_proto_files(entry: Path) -> tuple[Path, list[str]]:
    """The include root and the .proto names (relative to it) of an include file or folder."""
    if entry.is_file():
        return entry.parent, [entry.name]
    names = sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*.proto"))
    return entry, names
