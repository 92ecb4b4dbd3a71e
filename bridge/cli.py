"""The bridge command: serve, check, openapi, schema, and protos add|list|remove.

Plain text, no markup: argparse prints this docstring as ``bridge --help``'s description.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from bridge.admin_client import ClientError, add_commands
from bridge.config import ConfigError, Settings, load_settings
from bridge.observe import log as observe_log
from bridge.policy import Chains
from bridge.registry import CompileError, Registry, SnapshotError

log = logging.getLogger("bridge")
CONFIG_HELP = "the YAML config file (bridge.yaml; bridge schema prints its JSON Schema)"


class Fatal(Exception):
    """A problem that stops the command with one readable line."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return int(args.run(args) or 0)
    except (Fatal, ClientError) as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_left()


def _reader_left() -> int:
    """``bridge openapi | head``: the reader closed the pipe, which is not an error to report.

    stdout is pointed at /dev/null so that Python's flush at exit does not raise again, and
    the exit code is a shell's for SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve HTTP/JSON and WebSocket in front of gRPC")
    serve.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    serve.add_argument(
        "--listen", metavar="HOST:PORT", help="the address to listen on, instead of the config's"
    )
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="processes sharing the port (default: 1)",
    )  # fmt: skip
    serve.set_defaults(run=_serve)
    check = commands.add_parser("check", help="validate the config and protos, print the routes")
    check.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    check.set_defaults(run=_check)
    openapi = commands.add_parser("openapi", help="print the OpenAPI 3.1 document of the routes")
    openapi.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    openapi.set_defaults(run=_openapi)
    schema = commands.add_parser("schema", help="print the JSON Schema of the config file")
    schema.set_defaults(run=_schema)
    add_commands(commands)
    return parser


def _settings(path: str) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise Fatal(str(exc)) from None


async def _load(settings: Settings, chains: Chains | None = None) -> Registry:
    from bridge.app import load_registry

    with _proto_errors(settings):
        return await load_registry(settings, chains)


@contextlib.contextmanager
def _proto_errors(settings: Settings) -> Iterator[None]:
    """Protos that do not compile or cannot be served, as one readable fatal message."""
    try:
        yield
    except CompileError as exc:
        lines = "\n  ".join(str(d) for d in exc.diagnostics)
        raise Fatal(
            f"{settings.source}: protos.include: the protos do not compile:\n  {lines}"
        ) from None
    except SnapshotError as exc:
        raise Fatal(f"{settings.source}: {exc}") from None
    except ConfigError as exc:  # what the policies find when they start (a bad JWKS file)
        raise Fatal(str(exc)) from None


async def _no_calls(call: Any) -> Any:
    raise RuntimeError("bridge check makes no calls")


def _check(args: argparse.Namespace) -> int:
    from bridge.compose import Composition
    from bridge.policy.chains import Policies

    settings = _settings(args.config)
    with _proto_errors(settings):
        policies = Policies(settings, _no_calls)  # reads what they need (the JWKS file)
    # Every method's chain built as serve builds it: a fallback response that does not fit
    # its method's message, or a cache rule naming a stream, stops check too.
    registry = asyncio.run(_load(settings, policies.chain))
    composition = Composition.of(settings)
    _check_composition(settings, composition, registry)
    for line in route_table(registry, composition):
        print(line)
    print(
        f"ok: {len(registry.snapshot.methods)} methods, "
        f"{len(registry.snapshot.routes.routes)} routes, {len(composition.routes)} config routes",
        file=sys.stderr,
    )
    return 0


def route_table(registry: Registry, composition: Any) -> list[str]:
    """The routes as aligned columns: the config's (aggregates, static) first, as matched."""
    rows = [("VERB", "PATH", "METHOD", "KIND", "UPSTREAM")]
    notes = []
    for route, line in zip(composition.routes, composition.describe(), strict=True):
        # describe() says "VERB PATH  ->  what (owner)"; the table keeps the what as a note.
        what = line.partition("  ->  ")[2].removesuffix(f" ({route.owner})")
        kind = "aggregate" if what.startswith("aggregate ") else what  # or "static 200"
        rows.append((route.verb, route.template.source, route.owner, kind, "-"))
        notes.append(f"{route.owner}: {what}" if kind == "aggregate" else "")
    for route in registry.snapshot.routes.routes:
        method = route.target.method
        rows.append(
            (route.verb, route.template.source, method.full_name, method.kind, method.upstream)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]  # the last column unpadded: no trailing blanks
    return lines + [""] * any(notes) + [note for note in notes if note]


def _check_composition(settings: Settings, composition: Any, registry: Registry) -> None:
    """The aggregates checked against protos.include; a method only reflection or a
    registration can bring is a warning here (serve checks it once they are loaded)."""
    runtime = settings.admin_token is not None or any(
        u.reflection for u in settings.upstreams.values()
    )
    unserved: list[str] | None = [] if runtime else None
    with _proto_errors(settings):
        composition.check(registry.snapshot, unserved)
    for line in unserved or ():
        print(f"warning: {line} (not in protos.include; checked again at serve)", file=sys.stderr)


def _openapi(args: argparse.Namespace) -> int:
    """Print the OpenAPI document of the config's routes as JSON, nothing else on stdout."""
    import json

    from bridge.openapi import openapi_document

    settings = _settings(args.config)
    registry = asyncio.run(_load(settings))
    from bridge.compose import Composition

    document = openapi_document(
        registry.snapshot,
        use_proto_names=settings.json.use_proto_names,
        composed=Composition.of(settings).routes,
        auth=settings.auth,
    )
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


def _schema(_args: argparse.Namespace) -> int:
    """Print the config file's JSON Schema, which bridge.schema.json at the repo root holds."""
    import json

    from bridge.config import config_schema

    print(json.dumps(config_schema(), indent=2, ensure_ascii=False))
    return 0


def _listen(args: argparse.Namespace, settings: Settings) -> tuple[str, int]:
    if not args.listen:
        return settings.listen
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit() or not host:
        raise Fatal(f"--listen: '{args.listen}' is not HOST:PORT")
    return host.strip("[]"), int(port)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    host, port = _listen(args, settings)
    if args.workers < 1:
        raise Fatal("--workers: must be at least 1")
    _use_uvloop()
    _raise_open_files_limit()
    observe_log.to_stderr()  # access and audit lines as bare JSON, not the root's format
    if args.workers == 1:
        return asyncio.run(_serve_one(settings, host, port, reuse_port=False))
    return _serve_many(settings, host, port, args.workers)


def _raise_open_files_limit() -> None:
    """A gateway holds a socket per client and per backend: use all the descriptors allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve_one(settings: Settings, host: str, port: int, reuse_port: bool) -> int:
    from bridge.app import start

    try:
        with _proto_errors(settings):
            runner, bound = await start(settings, host, port, reuse_port=reuse_port)
    except OSError as exc:
        raise Fatal(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    log.info("bridge listening on http://%s:%d (pid %d)", host, bound, os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("bridge shutting down")
    await runner.cleanup()
    return 0


def _worker(settings: Settings, host: str, port: int) -> int:
    """One forked worker; it must never return into the parent's code."""
    try:
        return asyncio.run(_serve_one(settings, host, port, reuse_port=True))
    except Fatal as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        return 1


def _serve_many(settings: Settings, host: str, port: int, workers: int) -> int:
    """Fork ``workers`` processes that share the port through SO_REUSEPORT."""
    with _shared_metrics():
        return _fork(settings, host, port, workers)


@contextlib.contextmanager
def _shared_metrics() -> Iterator[None]:
    """Workers write their metrics to one temporary directory and each /metrics sums them all
    (prometheus-client's multiprocess mode); set before prometheus-client is first imported."""
    path = tempfile.mkdtemp(prefix="bridge-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _fork(settings: Settings, host: str, port: int, workers: int) -> int:
    asyncio.run(_load(settings))  # fail once, before forking, on a bad proto
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            os._exit(_worker(settings, host, port))
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    status = 0
    for pid in children:
        _, code = os.waitpid(pid, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status


if __name__ == "__main__":
    sys.exit(main())
