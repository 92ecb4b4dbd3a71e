"""Where registrations persist: the folder store here, the Redis one in bridge.shared.

The registrar uses either through `RegistrationStore`. The folder store (the embedded default)
keeps one JSON file per registration, written atomically, and is followed by polling what its
files look like; the Redis store is shared by every instance and announces its changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

log = logging.getLogger("bridge.registry")

NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
Signature = tuple[tuple[str, int, int], ...]  # (file name, mtime in ns, size) per entry


@dataclass(frozen=True)
class Registration:
    """What a team uploaded: proto sources and where their services run."""

    name: str
    files: Mapping[str, str]  # proto file name (relative, with folders) -> source text
    upstream: str | None = None  # a configured upstream, or
    targets: tuple[str, ...] = ()  # targets of an upstream owned by this registration

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "files": dict(self.files)}
        if self.upstream:
            data["upstream"] = self.upstream
        else:
            data["targets"] = list(self.targets)
        return data

    @classmethod
    def from_json(cls, data: Any) -> Registration:
        """Rebuild a stored registration; ValueError when the entry is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("not a registration object")
        files = data.get("files")
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()
        ):
            raise ValueError("'files' must map file names to source text")
        targets = data.get("targets") or []
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise ValueError("'targets' must be a list of host:port strings")
        return cls(data["name"], files, data.get("upstream"), tuple(targets))


@dataclass(frozen=True)
class Listing:
    """The registrations a store holds, and the names of entries it could not read."""

    registrations: tuple[Registration, ...]
    unreadable: frozenset[str] = frozenset()


class StoreUnavailable(OSError):
    """The store cannot take or give registrations now; the message says why, for a 503."""


class RegistrationStore(Protocol):
    """What the registrar needs of a store: writes, the full listing, and news of changes."""

    @property
    def where(self) -> str:
        """The store as messages name it (never with a password)."""

    async def put(self, registration: Registration) -> None:
        """Store a registration, replacing one of the same name; OSError when it cannot."""

    async def discard(self, name: str) -> None: ...

    async def contents(self, serving: Sequence[Registration]) -> Listing:
        """What the store holds; ``serving`` is what this instance serves now, written back
        by a store that lost its data."""

    async def marker(self) -> Hashable:
        """A value that changes whenever what the store holds may have changed."""

    async def pause(self, interval: float) -> None:
        """Wait before the next look at `marker`: ``interval``, or until a change is announced."""

    async def close(self) -> None: ...


class FileStore:
    """A folder of ``<name>.json`` registrations; a write never leaves half a file.

    Its `RegistrationStore` methods run the file calls in threads, and its marker is the
    folder's `signature`, looked at every ``interval``: processes sharing the folder
    (``--workers N``) see each other's writes within that time.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def where(self) -> str:
        return str(self.folder)

    async def put(self, registration: Registration) -> None:
        await asyncio.to_thread(self.save, registration)

    async def discard(self, name: str) -> None:
        await asyncio.to_thread(self.delete, name)

    async def contents(self, serving: Sequence[Registration]) -> Listing:
        return await asyncio.to_thread(self.listing)

    async def marker(self) -> Hashable:
        return await asyncio.to_thread(self.signature)

    async def pause(self, interval: float) -> None:
        await asyncio.sleep(interval)

    async def close(self) -> None:
        """Nothing to close: every call opens and closes its files."""

    def save(self, registration: Registration) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = json.dumps(registration.to_json(), indent=1).encode()
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path(registration.name))  # atomic on POSIX
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_folder(self.folder)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
        _fsync_folder(self.folder)

    def listing(self) -> Listing:
        """What the store holds; OSError when its folder cannot be listed at all.

        A missing folder is an empty store. An entry that cannot be read now (out of file
        descriptors, corrupt) is logged and named in ``unreadable``, not taken for a removal.
        """
        if not self._is_folder():
            return Listing(())
        found: list[Registration] = []
        unreadable: set[str] = set()
        for path in sorted(self.folder.glob("*.json")):
            try:
                registration = Registration.from_json(json.loads(path.read_text()))
                if registration.name != path.stem:
                    raise ValueError(f"names '{registration.name}' but is stored as '{path.stem}'")
            except FileNotFoundError:
                continue  # removed while listing
            except (OSError, ValueError) as exc:
                log.error("protos.store: skipping %s: %s", path, exc)
                unreadable.add(path.stem)
                continue
            found.append(registration)
        return Listing(tuple(found), frozenset(unreadable))

    def signature(self) -> Signature:
        """What changes when any registration file is written, replaced or removed."""
        if not self._is_folder():
            return ()
        found = []
        for path in self.folder.glob("*.json"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # removed while listing
            found.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(sorted(found))

    def _is_folder(self) -> bool:
        """Whether the folder exists; NotADirectoryError when a file stands in its place."""
        if self.folder.is_dir():
            return True
        if self.folder.exists():
            raise NotADirectoryError(f"protos.store {self.folder} is not a folder")
        return False

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.json"


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
