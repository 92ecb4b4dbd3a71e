"""Run-time changes to what is served: registrations, removals, reflection refreshes.

Every change builds a complete new Snapshot from the proto sets (config includes, then
registrations, then reflection) and swaps the one reference in ``Registry``; requests that
already took the old snapshot finish on it. A lock serializes the swaps, not the compiles.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bridge import errors
from bridge.config import Settings, UpstreamSettings
from bridge.errors import BridgeError
from bridge.registry import Registry
from bridge.registry.compiler import (
    BUNDLED_PACKAGES,
    CompileError,
    compile_protos,
    include_root,
)
from bridge.registry.reflection import ReflectionError, discover
from bridge.registry.snapshot import (
    INCLUDE,
    JsonShape,
    ProtoSet,
    Snapshot,
    SnapshotError,
    build_snapshot,
)
from bridge.registry.store import NAME, FileStore, Registration
from bridge.upstream.pool import Upstreams

log = logging.getLogger("bridge.registry")

_RESERVED: Final = tuple(f"{p}/" for p in ("google/protobuf", *BUNDLED_PACKAGES))
_MAX_FILES: Final = 500
_TARGET: Final = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$|^unix:/\S+$")


@dataclass(frozen=True)
class Entry:
    registration: Registration
    protos: ProtoSet


class Registrar:
    """Applies registrations to the live registry and keeps the store in step."""

    def __init__(
        self, settings: Settings, registry: Registry, upstreams: Upstreams, include: ProtoSet
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.upstreams = upstreams
        self.include = include
        self.store = FileStore(settings.protos_store)
        self.entries: dict[str, Entry] = {}
        self.reflected: dict[str, ProtoSet] = {}
        self._lock = asyncio.Lock()
        # The config is frozen: resolve its include roots once, not per upload.
        self._include_roots = [include_root(p) for p in settings.protos_include if p.exists()]
        self._json = JsonShape(
            settings.json.emit_unpopulated,
            settings.json.use_proto_names,
            settings.json.discard_unknown,
        )

    async def restore(self) -> None:
        """Bring back stored registrations and reflected upstreams; bad ones are logged, skipped."""
        await self._restore_registrations(await asyncio.to_thread(self.store.load))
        for name, upstream in self.settings.upstreams.items():
            if upstream.reflection:
                try:
                    await self.refresh(name)
                except BridgeError as exc:
                    log.warning("reflection of upstream '%s' failed: %s", name, exc.message)

    async def _restore_registrations(self, pending: list[Registration]) -> None:
        await _in_passes(pending, lambda r: self.register(r, persist=False))

    async def register(
        self, registration: Registration, *, persist: bool = True
    ) -> tuple[bool, Snapshot]:
        """Compile and serve a registration: (replaced, snapshot), or a BridgeError if refused."""
        upstream, protos = await self._prepare(registration)
        async with self._lock:
            return await self._apply(registration, upstream, protos, persist)

    async def _prepare(self, registration: Registration) -> tuple[str, ProtoSet]:
        _check_registration(registration)
        upstream = self._upstream_name(registration)
        return upstream, await self._compile(registration, upstream)

    async def _apply(
        self, registration: Registration, upstream: str, protos: ProtoSet, persist: bool
    ) -> tuple[bool, Snapshot]:
        """Swap in a snapshot with this registration; the caller holds the lock."""
        previous = self.entries.get(registration.name)
        self._check_importers(registration.name, registration.files)
        entries = {**self.entries, registration.name: Entry(registration, protos)}
        snapshot = await self._build(entries, self.reflected)
        if registration.targets:
            self.upstreams.replace(_owned_upstream(registration, upstream))
        elif previous is not None and previous.registration.targets:
            self.upstreams.discard(f"registration:{registration.name}")
        if persist:
            await asyncio.to_thread(self.store.save, registration)
        self.entries = entries
        self.registry.snapshot = snapshot
        return previous is not None, snapshot

    async def watch(self, interval: float = 1.0) -> None:
        """Follow registrations other processes write to the same store (``--workers N``)."""
        seen = await asyncio.to_thread(self.store.signature)
        while True:
            await asyncio.sleep(interval)
            current = await asyncio.to_thread(self.store.signature)
            if current != seen:
                seen = current
                await self.sync()

    async def sync(self) -> None:
        """Make the live registrations match the store: add, replace and drop as it says.

        All under the lock, store read included, so a registration this process is applying
        at the same time lands after the sync and is never overwritten by an older file.
        """
        async with self._lock:
            stored = {r.name: r for r in await asyncio.to_thread(self.store.load)}
            changed = [r for name, r in stored.items() if self._registration(name) != r]
            await _in_passes(changed, self._apply_stored)
            for name in [n for n in self.entries if n not in stored]:
                try:
                    await self._remove(name, persist=False)
                except BridgeError as exc:
                    log.error("protos.store: cannot drop registration '%s': %s", name, exc.message)

    async def _apply_stored(self, registration: Registration) -> object:
        upstream, protos = await self._prepare(registration)
        return await self._apply(registration, upstream, protos, persist=False)

    def _registration(self, name: str) -> Registration | None:
        entry = self.entries.get(name)
        return entry.registration if entry is not None else None

    async def remove(self, name: str) -> None:
        async with self._lock:
            await self._remove(name, persist=True)

    async def _remove(self, name: str, *, persist: bool) -> None:
        """Swap in a snapshot without this registration; the caller holds the lock."""
        entry = self.entries.get(name)
        if entry is None:
            raise BridgeError(errors.NOT_FOUND, f"no registration named '{name}'")
        self._check_importers(name, ())
        entries = {k: v for k, v in self.entries.items() if k != name}
        snapshot = await self._build(entries, self.reflected)
        if persist:
            await asyncio.to_thread(self.store.delete, name)
        self.entries = entries
        self.registry.snapshot = snapshot
        if entry.registration.targets:
            self.upstreams.discard(entry.protos.upstream or "")

    async def refresh(self, upstream: str) -> ProtoSet:
        """Ask an upstream for its services again through server reflection."""
        settings = self.settings.upstreams.get(upstream)
        if settings is None:
            raise BridgeError(errors.NOT_FOUND, f"no upstream named '{upstream}'")
        if not settings.reflection:
            raise errors.invalid_argument(f"upstream '{upstream}' does not enable reflection")
        try:
            protos = await discover(self.upstreams[upstream].channels[0], upstream)
        except ReflectionError as exc:
            raise BridgeError(
                errors.UNAVAILABLE, f"reflection of '{upstream}' failed: {exc}"
            ) from None
        async with self._lock:
            reflected = {**self.reflected, upstream: protos}
            self.registry.snapshot = await self._build(self.entries, reflected)
            self.reflected = reflected
        return protos

    def _check_importers(self, name: str, kept: Collection[str]) -> None:
        """Refuse to take away a file another registration imports from ``name``.

        The importer's stored sources do not hold that file, so after a restart it could not
        be compiled again: it would be lost.
        """
        entry = self.entries.get(name)
        if entry is None:
            return
        provided = {f for n, e in self.entries.items() if n != name for f in e.registration.files}
        dropped = set(entry.registration.files) - set(kept) - provided
        for other, importer in sorted(self.entries.items()):
            used = sorted(dropped & {f.name for f in importer.protos.files.file})
            if other != name and used:
                raise BridgeError(
                    errors.FAILED_PRECONDITION,
                    f"'{other}' imports {used[0]} from '{name}': change or remove '{other}' first",
                )

    async def _build(
        self, entries: Mapping[str, Entry], reflected: Mapping[str, ProtoSet]
    ) -> Snapshot:
        sets = [self.include, *(e.protos for e in entries.values()), *reflected.values()]
        try:
            # In a thread: building a large snapshot is CPU work the event loop should not wait on.
            return await asyncio.to_thread(
                build_snapshot, sets, self.settings.upstream_for, self._json
            )
        except SnapshotError as exc:
            code = errors.ALREADY_EXISTS if exc.conflict else errors.INVALID_ARGUMENT
            raise BridgeError(code, str(exc)) from None

    def _upstream_name(self, registration: Registration) -> str:
        if registration.upstream:
            if registration.upstream not in self.upstreams:
                known = ", ".join(sorted(self.settings.upstreams)) or "none"
                raise errors.invalid_argument(
                    f"upstream '{registration.upstream}' is not configured (known: {known})"
                )
            return registration.upstream
        return f"registration:{registration.name}"

    async def _compile(self, registration: Registration, upstream: str) -> ProtoSet:
        """Compile the uploaded files against includes and the other registrations' sources."""
        with tempfile.TemporaryDirectory(prefix="bridge-upload-") as tmp:
            upload, others = Path(tmp) / "upload", Path(tmp) / "others"
            others_files = {
                name: text
                for entry in self.entries.values() if entry.registration.name != registration.name
                for name, text in entry.registration.files.items()
            }  # fmt: skip
            await asyncio.to_thread(_write_tree, upload, registration.files)
            await asyncio.to_thread(_write_tree, others, others_files)
            roots = [upload, *self._include_roots, others]
            try:
                files = await compile_protos(sorted(registration.files), roots)
            except CompileError as exc:
                raise BridgeError(
                    errors.INVALID_ARGUMENT,
                    f"{len(exc.diagnostics)} compile error(s), first: {exc.diagnostics[0]}",
                    extra={"errors": [d.to_json() for d in exc.diagnostics]},
                ) from None
        return ProtoSet(registration.name, files, frozenset(registration.files), upstream)

    def summary(self, name: str, snapshot: Snapshot) -> dict[str, Any]:
        """The services, methods and routes a registration owns in a snapshot."""
        methods = sorted(m.full_name for m in snapshot.methods.values() if m.source == name)
        routes = [
            {"method": r.owner, "verb": r.verb, "path": r.template.source}
            for r in snapshot.routes.routes
            if r.target.method.source == name
        ]
        return {
            "name": name,
            "services": snapshot.services(name),
            "methods": methods,
            "routes": routes,
        }


async def _in_passes(
    pending: list[Registration], apply: Callable[[Registration], Awaitable[object]]
) -> None:
    """Apply stored registrations in passes: one may import a file a later one uploads."""
    while pending:
        failed: list[tuple[Registration, BridgeError]] = []
        for registration in pending:
            try:
                await apply(registration)
            except BridgeError as exc:
                failed.append((registration, exc))
        if len(failed) == len(pending):  # no progress: what is left cannot be applied
            for registration, error in failed:
                name = registration.name
                log.error("protos.store: skipping registration '%s': %s", name, error.message)
            return
        pending = [registration for registration, _ in failed]


def _check_registration(registration: Registration) -> None:
    """Refuse names and file names that could escape the upload or shadow bundled protos."""
    if not NAME.match(registration.name):
        raise errors.invalid_argument(
            f"name '{registration.name}' must be 1-63 letters, digits, '.', '_' or '-'"
        )
    if registration.name == INCLUDE:
        raise errors.invalid_argument(f"name '{INCLUDE}' is reserved for the config's protos")
    if not registration.files:
        raise errors.invalid_argument("files: at least one .proto file is needed")
    if len(registration.files) > _MAX_FILES:
        raise errors.invalid_argument(f"files: at most {_MAX_FILES} files per registration")
    for name in registration.files:
        problem = _file_name_problem(name)
        if problem:
            raise errors.invalid_argument(f"files: '{name}' {problem}")
    if bool(registration.upstream) == bool(registration.targets):
        raise errors.invalid_argument("give exactly one of 'upstream' or 'targets'")
    for target in registration.targets:
        if not _TARGET.match(target):
            raise errors.invalid_argument(f"targets: '{target}' is not host:port")


def _file_name_problem(name: str) -> str | None:
    if not name.endswith(".proto"):
        return "does not end in .proto"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is absolute; use a path relative to the proto root"
    if name.startswith(("-", "@")):
        # protoc would take it for an option, or '@FILE' for a file of options to read.
        return "may not start with '-' or '@'"
    parts = name.split("/")
    if "\\" in name or any(p in ("", ".", "..") for p in parts):
        return "may not contain '..', '.', empty segments or backslashes"
    if name.startswith(_RESERVED):
        return "would shadow a bundled google/* proto"
    return None


def _write_tree(root: Path, files: Mapping[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _owned_upstream(registration: Registration, name: str) -> UpstreamSettings:
    return UpstreamSettings(name=name, targets=registration.targets)
