"""Run-time changes to what is served: registrations, removals, reflection refreshes.

Every change builds a complete new Snapshot from the proto sets (config includes, then
registrations, then reflection) and swaps the one reference in ``Registry``; requests that
already took the old snapshot finish on it. A lock serializes the swaps, not the compiles.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bridge import errors
from bridge.config import Settings, UpstreamSettings
from bridge.errors import BridgeError
from bridge.registry import Registry
from bridge.registry.compiler import CompileError, compile_protos, include_root
from bridge.registry.reflection import ReflectionError, discover
from bridge.registry.snapshot import (
    JsonShape,
    ProtoSet,
    Snapshot,
    SnapshotError,
    build_snapshot,
)
from bridge.registry.store import FileStore, Registration, RegistrationStore, StoreUnavailable
from bridge.registry.upload import check_registration, folder_clash, shown, write_tree
from bridge.shared.link import RedisLinks, is_redis
from bridge.shared.registrations import RedisRegistrations
from bridge.upstream.pool import Upstreams

log = logging.getLogger("bridge.registry")

WATCH_INTERVAL: Final = 1.0  # seconds between looks at the store
MAX_WATCH_BACKOFF: Final = 30.0  # the longest pause between tries while the store fails


@dataclass(frozen=True)
class Entry:
    registration: Registration
    protos: ProtoSet


class Registrar:
    """Applies registrations to the live registry and keeps the store in step."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        upstreams: Upstreams,
        include: ProtoSet,
        links: RedisLinks | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.upstreams = upstreams
        self.include = include
        self.store = _open_store(settings.protos_store, links)
        self.entries: dict[str, Entry] = {}
        self.reflected: dict[str, ProtoSet] = {}
        self._lock = asyncio.Lock()
        self._seen: Hashable | None = None  # the store's marker as last applied; None: not yet
        # The config is frozen: resolve its include roots once, not per upload.
        self._include_roots = [include_root(p) for p in settings.protos_include if p.exists()]
        self._json = JsonShape(
            settings.json.emit_unpopulated,
            settings.json.use_proto_names,
            settings.json.discard_unknown,
        )

    async def restore(self) -> None:
        """Bring back stored registrations and reflected upstreams; bad ones are logged, skipped.

        A store that cannot be read at all is logged (an unreachable Redis by its link); the
        watcher applies it once it can.
        """
        try:
            # Taken first: whatever is written while the store is read is then seen as a change.
            seen = await self.store.marker()
            stored = list((await self.store.contents(())).registrations)
        except StoreUnavailable:
            pass  # its link has said so; serving the config's protos until it answers
        except OSError as exc:
            log.error("protos.store: cannot read it: %s; starting without its registrations", exc)
        else:
            await self._restore_registrations(stored)
            self._seen = seen
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
        """Compile and serve a registration: (replaced, snapshot), or a BridgeError if refused.

        A failure of this host (no temporary folder, no process for protoc, a store that cannot
        be written) is a 503 that changes nothing.
        """
        try:
            upstream, protos = await self._prepare(registration)
            async with self._lock:
                return await self._apply(registration, upstream, protos, persist)
        except OSError as exc:
            raise _unavailable(f"cannot register '{registration.name}' now", exc) from None

    async def _prepare(self, registration: Registration) -> tuple[str, ProtoSet]:
        check_registration(registration)
        upstream = self._upstream_name(registration)
        return upstream, await self._compile(registration, upstream)

    async def _apply(
        self, registration: Registration, upstream: str, protos: ProtoSet, persist: bool
    ) -> tuple[bool, Snapshot]:
        """Swap in a snapshot with this registration; the caller holds the lock."""
        previous = self.entries.get(registration.name)
        self._check_importers(registration.name, registration.files)
        self._check_folders(registration)
        entries = {**self.entries, registration.name: Entry(registration, protos)}
        snapshot = await self._build(entries, self.reflected)
        if persist:  # first: a store that fails leaves everything as it was
            await self._persist(self.store.put, registration)
        if registration.targets:
            self.upstreams.replace(_owned_upstream(registration, upstream))
        elif previous is not None and previous.registration.targets:
            self.upstreams.discard(f"registration:{registration.name}")
        self.entries = entries
        self.registry.snapshot = snapshot
        return previous is not None, snapshot

    async def watch(
        self, interval: float = WATCH_INTERVAL, longest: float = MAX_WATCH_BACKOFF
    ) -> None:
        """Follow registrations other processes write to the same store (``--workers N``).

        Nothing ends the watch but cancellation. When the store cannot be read or applied (out
        of file descriptors, its folder replaced), the first failure is logged, tries go on
        after pauses doubling from ``interval`` up to ``longest``, and the recovery is logged
        and followed by a full sync, since changes may have been missed meanwhile. An
        unreachable Redis is logged by its link instead, and tried every ``interval``, so that
        the catching up starts within about that time of its return.
        """
        outage = _Outage(interval, longest)
        seen = self._seen
        try:
            while True:
                try:
                    current = await self.store.marker()
                    if current != seen:
                        await self.sync()
                except StoreUnavailable:
                    seen = None
                    await asyncio.sleep(interval)
                    continue
                except Exception as exc:  # one failure, whatever it is, must not end the watch
                    seen = None  # changes may have been missed: sync in full once it works
                    await asyncio.sleep(outage.failed(exc))
                    continue
                seen = current
                outage.ended()
                await self.store.pause(interval)
        finally:
            await self.store.close()

    async def sync(self) -> None:
        """Make the live registrations match the store: add, replace and drop as it says.

        All under the lock, store read included, so a registration this process is applying
        at the same time lands after the sync and is never overwritten by an older file.
        """
        async with self._lock:
            serving = [entry.registration for entry in self.entries.values()]
            listing = await self.store.contents(serving)
            stored = {r.name: r for r in listing.registrations}
            changed = [r for name, r in stored.items() if self._registration(name) != r]
            await _in_passes(changed, self._apply_stored)
            # An entry the store could not read now is kept: it was not removed.
            gone = [n for n in self.entries if n not in stored and n not in listing.unreadable]
            for name in gone:
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
        try:
            async with self._lock:
                await self._remove(name, persist=True)
        except OSError as exc:
            raise _unavailable(f"cannot remove '{name}' now", exc) from None

    async def _remove(self, name: str, *, persist: bool) -> None:
        """Swap in a snapshot without this registration; the caller holds the lock."""
        entry = self.entries.get(name)
        if entry is None:
            raise BridgeError(errors.NOT_FOUND, f"no registration named '{name}'")
        self._check_importers(name, ())
        entries = {k: v for k, v in self.entries.items() if k != name}
        snapshot = await self._build(entries, self.reflected)
        if persist:
            await self._persist(self.store.discard, name)
        self.entries = entries
        self.registry.snapshot = snapshot
        if entry.registration.targets:
            self.upstreams.discard(entry.protos.upstream or "")

    async def _persist(self, change: Callable[[Any], Awaitable[None]], what: Any) -> None:
        """Write a change to the store; a store that fails is a 503 naming it."""
        try:
            await change(what)
        except StoreUnavailable as exc:
            raise BridgeError(errors.UNAVAILABLE, str(exc)) from None
        except OSError as exc:
            raise _unavailable(f"protos.store {self.store.where} cannot be written", exc) from None

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

    def _check_folders(self, registration: Registration) -> None:
        """Refuse a file that is a folder of another registration's file, or the reverse."""
        others = {n: e.registration for n, e in self.entries.items() if n != registration.name}
        clash = folder_clash(registration.files, (f for r in others.values() for f in r.files))
        if clash is None:
            return
        folder, below = clash
        theirs = folder if below in registration.files else below
        owner = next(n for n, r in sorted(others.items()) if theirs in r.files)
        if theirs == folder:
            problem = f"{shown(below)} needs a folder {shown(folder)}, which is a file of '{owner}'"
        else:
            problem = f"{shown(folder)} is the folder of {shown(below)}, a file of '{owner}'"
        raise errors.invalid_argument(f"files: {problem}")

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
            snapshot = await asyncio.to_thread(
                build_snapshot, sets, self.settings.upstream_for, self._json, self.registry.chains
            )
            if self.registry.admit is not None:
                self.registry.admit(snapshot)
            return snapshot
        except SnapshotError as exc:
            code = errors.ALREADY_EXISTS if exc.conflict else errors.INVALID_ARGUMENT
            raise BridgeError(code, str(exc)) from None

    def _upstream_name(self, registration: Registration) -> str:
        if registration.upstream:
            # Configured ones only: another registration's own upstream goes away with it.
            if registration.upstream not in self.settings.upstreams:
                known = ", ".join(sorted(self.settings.upstreams)) or "none"
                raise errors.invalid_argument(
                    f"upstream {shown(registration.upstream)} is not configured (known: {known})"
                )
            return registration.upstream
        return f"registration:{registration.name}"

    async def _compile(self, registration: Registration, upstream: str) -> ProtoSet:
        """Compile the uploaded files against includes and the other registrations' sources."""
        # Made and removed in a thread, like the files in it: no disk I/O on the event loop.
        tmp = await asyncio.to_thread(tempfile.mkdtemp, prefix="bridge-upload-")
        try:
            upload, others = Path(tmp) / "upload", Path(tmp) / "others"
            others_files = {
                name: text
                for entry in self.entries.values() if entry.registration.name != registration.name
                for name, text in entry.registration.files.items()
            }  # fmt: skip
            await asyncio.to_thread(write_tree, upload, registration.files)
            await asyncio.to_thread(write_tree, others, others_files)
            roots = [upload, *self._include_roots, others]
            try:
                files = await compile_protos(sorted(registration.files), roots)
            except CompileError as exc:
                raise BridgeError(
                    errors.INVALID_ARGUMENT,
                    f"{len(exc.diagnostics)} compile error(s), first: {exc.diagnostics[0]}",
                    extra={"errors": [d.to_json() for d in exc.diagnostics]},
                ) from None
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
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


class _Outage:
    """Failures of the store watcher in a row: logged at the first and at the end, paced."""

    def __init__(self, first: float, longest: float) -> None:
        self.first = first
        self.longest = longest
        self.failures = 0

    def failed(self, exc: Exception) -> float:
        """Count a failure, logging the first; return the pause before the next try."""
        self.failures += 1
        if self.failures == 1:
            # An OSError is the host's trouble, said in one line; anything else is a bug.
            log.error(
                "protos.store: cannot follow the store (%s: %s); retrying, at most every %gs",
                type(exc).__name__, exc, self.longest,
                exc_info=not isinstance(exc, (OSError, BridgeError)),
            )  # fmt: skip
        return min(self.first * 2 ** min(self.failures - 1, 16), self.longest)

    def ended(self) -> None:
        if self.failures:
            log.info("protos.store: following the store again after %d failed tries", self.failures)
            self.failures = 0


def _open_store(where: str, links: RedisLinks | None) -> RegistrationStore:
    """The folder store, or the Redis one when ``protos.store`` is a redis:// URL."""
    if is_redis(where):
        return RedisRegistrations((links if links is not None else RedisLinks()).get(where))
    return FileStore(where)


def _unavailable(what: str, exc: OSError) -> BridgeError:
    return BridgeError(errors.UNAVAILABLE, f"{what}: {exc}")


def _owned_upstream(registration: Registration, name: str) -> UpstreamSettings:
    return UpstreamSettings(name=name, targets=registration.targets)
