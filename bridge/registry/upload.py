"""What a registration may hold: names and sources that can be written to disk and compiled.

An upload is written to a temporary folder for protoc, so every file name must be a path the
file system takes (no NUL or other control characters, no segment over ``NAME_MAX``) and no
file may be the folder of another. Each problem is a 400 naming the file, found before anything
is written, so a refused upload changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from bridge import errors
from bridge.registry.compiler import BUNDLED_PACKAGES
from bridge.registry.snapshot import INCLUDE
from bridge.registry.store import NAME, Registration

MAX_FILES: Final = 500
MAX_TARGETS: Final = 64  # each target is a channel of its own
# A file name's length in UTF-8, in all and per segment. 255 bytes is the segment limit of
# Linux file systems (NAME_MAX); 1024 keeps the temporary paths protoc reads well under PATH_MAX.
MAX_NAME_BYTES: Final = 1024
MAX_SEGMENT_BYTES: Final = 255
_RESERVED: Final = tuple(f"{p}/" for p in ("google/protobuf", *BUNDLED_PACKAGES))
_TARGET: Final = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$|^unix:/\S+$")
# C0 and C1 control characters and DEL: no file system or protoc diagnostic should see them.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A lone surrogate (JSON allows "\ud800") cannot be encoded as UTF-8, so it cannot be written.
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")
_SHOWN: Final = 80  # characters of a refused name quoted in the error


def check_registration(registration: Registration) -> None:
    """Refuse names, file names and sources that could escape, crash or shadow bundled protos."""
    if not NAME.match(registration.name):
        raise errors.invalid_argument(
            f"name {shown(registration.name)} must be 1-63 letters, digits, '.', '_' or '-'"
        )
    if registration.name == INCLUDE:
        raise errors.invalid_argument(f"name '{INCLUDE}' is reserved for the config's protos")
    if not registration.files:
        raise errors.invalid_argument("files: at least one .proto file is needed")
    if len(registration.files) > MAX_FILES:
        raise errors.invalid_argument(f"files: at most {MAX_FILES} files per registration")
    for name, text in registration.files.items():
        problem = file_name_problem(name) or _source_problem(text)
        if problem:
            raise errors.invalid_argument(f"files: {shown(name)} {problem}")
    clash = folder_clash(registration.files, ())
    if clash:
        raise errors.invalid_argument(
            f"files: {shown(clash[1])} needs a folder {shown(clash[0])}, which is also a file"
        )
    if bool(registration.upstream) == bool(registration.targets):
        raise errors.invalid_argument("give exactly one of 'upstream' or 'targets'")
    if len(registration.targets) > MAX_TARGETS:
        raise errors.invalid_argument(f"targets: at most {MAX_TARGETS} per registration")
    for target in registration.targets:
        if not _TARGET.match(target) or not _port_ok(target):
            raise errors.invalid_argument(
                f"targets: {shown(target)} is not host:port with a port from 1 to 65535"
            )


def _port_ok(target: str) -> bool:
    """The rule the config applies to upstream targets (``UpstreamSettings`` refuses others)."""
    return target.startswith("unix:") or 1 <= int(target.rpartition(":")[2]) <= 65535


def file_name_problem(name: str) -> str | None:
    """What is wrong with an uploaded file name, or None."""
    if not name.endswith(".proto"):
        return "does not end in .proto"
    if bad := _CONTROL.search(name) or _SURROGATE.search(name):
        return f"holds {_escaped(bad.group())}: control characters and lone surrogates are refused"
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long in UTF-8; at most {MAX_NAME_BYTES}"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is absolute; use a path relative to the proto root"
    if name.startswith(("-", "@")):
        # protoc would take it for an option, or '@FILE' for a file of options to read.
        return "may not start with '-' or '@'"
    parts = name.split("/")
    if "\\" in name or any(p in ("", ".", "..") for p in parts):
        return "may not contain '..', '.', empty segments or backslashes"
    longest = max(len(p.encode()) for p in parts)
    if longest > MAX_SEGMENT_BYTES:
        return f"has a segment of {longest} bytes in UTF-8; at most {MAX_SEGMENT_BYTES}"
    if name.startswith(_RESERVED):
        return "would shadow a bundled google/* proto"
    return None


def _source_problem(text: str) -> str | None:
    bad = _SURROGATE.search(text)
    if bad is None:
        return None
    line = text.count("\n", 0, bad.start()) + 1
    return f"holds a lone surrogate ({_escaped(bad.group())}) on line {line}: not UTF-8 text"


def folder_clash(files: Iterable[str], others: Iterable[str]) -> tuple[str, str] | None:
    """A (file, file below it) pair among ``files`` and ``others``, one of them from ``files``.

    ``a.proto`` and ``a.proto/b.proto`` cannot both be written to one folder: the compile of
    any later registration, which writes every other registration's files, would fail.
    """
    mine, theirs = set(files), set(others)
    every = mine | theirs
    for name in sorted(every):
        parts = name.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in every and (name in mine or folder in mine):
                return folder, name
    return None


def shown(text: str) -> str:
    """A name quoted for an error message: control characters escaped, long names cut."""
    cut = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
    quoted = _CONTROL.sub(lambda m: _escaped(m.group()), cut)
    return "'" + _SURROGATE.sub(lambda m: _escaped(m.group()), quoted) + "'"


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def write_tree(root: Path, files: Mapping[str, str]) -> None:
    """Write sources under ``root``, folders as their names say (names checked beforehand)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
