"""The ``make run`` supervisor: the example services and the bridge, stopped together.

``python -m services.run`` checks that its four ports are free, starts users (50051), echo
(50052) and shop (50053, which the bridge does not know until the README's tour registers it),
then the bridge on 127.0.0.1:8080 with the committed ``bridge.yaml`` and the admin API on (a dev
token), waits until ``/readyz`` says the bridge serves and both example upstreams are reachable
and until shop accepts connections, prints curl commands to try, and runs until Ctrl-C or until
any of them exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from services.credentials import DEV_ENV, dev_credentials

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
BRIDGE_URL: Final = "http://127.0.0.1:8080"  # the listen address in bridge.yaml
PORTS: Final = {"the bridge": 8080, "users": 50051, "echo": 50052, "shop": 50053}
EXAMPLE_UPSTREAMS: Final = ("users", "echo")  # the upstreams make run starts; others may be down
# Started for the README's `bridge protos add` tour, so no upstream of bridge.yaml: make run
# waits for its port to accept connections instead.
UNREGISTERED_SERVICES: Final = ("shop",)
READY_TIMEOUT_SECONDS: Final = 20.0
STOP_TIMEOUT_SECONDS: Final = 5.0
POLL_SECONDS: Final = 0.25

CURL_EXAMPLES: Final = f"""\
# the auth policy's dev credentials (reads are public, writes need a key or a token)
source .bridge/dev.env
# a user (int64 karma comes back as a string)
curl -s {BRIDGE_URL}/v1/users/1
# filtered and paged
curl -s '{BRIDGE_URL}/v1/users?role=ROLE_MEMBER&page_size=1'
# create
curl -s -X POST {BRIDGE_URL}/v1/users -H "x-api-key: $BRIDGE_DEMO_KEY" \\
  -d '{{"displayName": "Grace Hopper", "role": "ROLE_MEMBER", "tags": ["navy"]}}'
# partial update with a field mask
curl -s -X PATCH '{BRIDGE_URL}/v1/users/2?update_mask=display_name' \\
  -H "x-api-key: $BRIDGE_DEMO_KEY" -d '{{"displayName": "Alan M. Turing"}}'
# a custom verb
curl -s -X POST '{BRIDGE_URL}/v1/users/2:ban' -H "x-api-key: $BRIDGE_DEMO_KEY" \\
  -d '{{"reason": "spam", "duration": "3600s"}}'
# server streaming as NDJSON, then as Server-Sent Events
curl -N '{BRIDGE_URL}/v1/ticks?count=5&interval_ms=500'
curl -N -H 'Accept: text/event-stream' '{BRIDGE_URL}/v1/ticks?count=5&interval_ms=500'
# the default route, for any method
curl -s -X POST {BRIDGE_URL}/demo.echo.v1.EchoService/Echo -H 'Content-Type: application/json' \\
  -d '{{"message": "hello", "number": "9007199254740993"}}'
# google.api.HttpBody: a download streamed as raw bytes, an upload taking the raw body
curl -N '{BRIDGE_URL}/v1/files/report.txt?lines=3&interval_ms=300'
printf 'hello, raw bytes' | curl -s --data-binary @- -H 'Content-Type: application/octet-stream' \\
  {BRIDGE_URL}/v1/files/hello.bin
# every call kind over one WebSocket, in the browser: open {BRIDGE_URL}/demo
# a 429 after Echo's burst of 5, and a delete that needs a JWT with the users.admin scope
for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' {BRIDGE_URL}/v1/echo/hi; done
echo; ADMIN=$(.venv/bin/python -m services.credentials token --scope users.admin)
curl -s -X DELETE {BRIDGE_URL}/v1/users/2 -H "Authorization: Bearer $ADMIN"
# the OpenAPI document of every route
curl -s {BRIDGE_URL}/openapi.json | head -c 300; echo"""

DEV_NOTE: Final = f"""
# dev credentials, kept in {DEV_ENV.relative_to(REPO_ROOT)}: API key {{key}} (header x-api-key);
# JWTs: .venv/bin/python -m services.credentials token [--sub NAME] [--scope SCOPES]
# the admin API is on with the dev token BRIDGE_ADMIN_TOKEN (also in that file), so after
# `source {DEV_ENV.relative_to(REPO_ROOT)}`: .venv/bin/bridge protos list
# the shop service on 127.0.0.1:50053 waits to be registered (README section "Registering
# protos at run time")"""


@dataclass
class Child:
    """A named subprocess under supervision."""

    name: str
    process: subprocess.Popen[bytes]

    def exit_reason(self) -> str | None:
        """Return why the process has ended, or None while it runs."""
        code = self.process.poll()
        return None if code is None else f"{self.name} exited with code {code}"


def spawn(name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
    """Start a child in the repo root, in its own process group."""
    # Its own group keeps a terminal Ctrl-C away from it, so that the supervisor alone
    # decides the shutdown order: the bridge first, then the services it calls.
    process = subprocess.Popen(args, cwd=REPO_ROOT, process_group=0, env=env)
    return Child(name, process)


def start_all(children: list[Child]) -> None:
    """Start the three services and the bridge, in that order, appending each to children."""
    # Appending one by one means an interrupt half-way still leaves every started child
    # in the list that the shutdown walks.
    python = sys.executable
    children.append(spawn("users", [python, "-m", "services.users", "--port", "50051"]))
    children.append(spawn("echo", [python, "-m", "services.echo", "--port", "50052"]))
    children.append(spawn("shop", [python, "-m", "services.shop", "--port", "50053"]))
    bridge = [python, "-m", "bridge.cli", "serve", "--config", "bridge.yaml"]
    children.append(spawn("bridge", bridge, {**os.environ, **dev_credentials(os.environ)}))


def busy_ports(ports: dict[str, int], host: str = "127.0.0.1") -> list[str]:
    """Which of the named ports something already listens on (a second ``make run``, say)."""
    busy = []
    for name, port in ports.items():
        with socket.socket() as sock:
            # As the servers bind: a closed connection's TIME_WAIT does not count, a listener does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(f"{host}:{port} ({name})")
    return busy


def probe(url: str, upstreams: tuple[str, ...] = EXAMPLE_UPSTREAMS) -> str | None:
    """Return None when url answers 200 and reports the named upstreams ready, else why not.

    Only those: a registration left in ``.bridge/registry`` whose backend is gone is
    reported after start-up, never a reason for ``make run`` to give up.
    """
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            if response.status != 200:
                return f"{url} answered {response.status}"
            detail = json.loads(response.read()).get("upstreams", {})
    except urllib.error.HTTPError as exc:
        body = exc.read(500).decode(errors="replace").strip()
        return f"{url} answered {exc.code}: {body}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    except ValueError:
        return f"{url} answered something other than JSON"
    down = [name for name in upstreams if not detail.get(name, {}).get("ready")]
    return f"upstreams not reachable yet: {', '.join(down)}" if down else None


def not_listening(ports: dict[str, int], host: str = "127.0.0.1") -> str | None:
    """Return None when every named port accepts a TCP connection, else which do not yet."""
    closed = []
    for name, port in ports.items():
        try:
            socket.create_connection((host, port), timeout=1.0).close()
        except OSError:
            closed.append(name)
    return f"not listening yet: {', '.join(closed)}" if closed else None


def unreachable_upstreams(url: str) -> list[str]:
    """The upstreams /readyz reports unreachable (registered ones whose backend is gone)."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            detail = json.loads(response.read()).get("upstreams", {})
    except (OSError, ValueError):
        return []
    return sorted(name for name, state in detail.items() if not state.get("ready"))


def describe_down(upstream: str) -> str:
    """What to tell about an unreachable upstream, with the way out for a stale registration."""
    registration = upstream.removeprefix("registration:")
    if registration == upstream:
        return f"upstream '{upstream}' is not reachable"
    return (
        f"registration '{registration}': its backend is not reachable (remove it with "
        f"`.venv/bin/bridge protos remove {registration}`, or `make clean` drops every one)"
    )


def wait_ready(children: list[Child], url: str, timeout: float) -> str | None:
    """Poll url until it answers 200; return None then, else the reason it never did."""
    deadline = time.monotonic() + timeout
    reason = "not polled yet"
    while time.monotonic() < deadline:
        for child in children:
            if (exited := child.exit_reason()) is not None:
                return exited
        problem = probe(url) or not_listening({n: PORTS[n] for n in UNREGISTERED_SERVICES})
        if problem is None:
            return None
        reason = problem
        time.sleep(POLL_SECONDS)
    return f"not ready after {timeout:.0f}s: {reason}"


def wait_for_exit(children: list[Child]) -> str:
    """Block until a child ends; return the reason."""
    while True:
        for child in children:
            if (exited := child.exit_reason()) is not None:
                return exited
        time.sleep(POLL_SECONDS)


def stop_all(children: list[Child]) -> None:
    """Terminate every child, newest first, and kill those still alive after the timeout."""
    # A second Ctrl-C must not abandon the children half-way; the kill deadline bounds this.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for child in reversed(children):
        try:
            child.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            print(f"run: {child.name} did not stop in time, killing it", file=sys.stderr)
            child.process.kill()
            child.process.wait()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Run everything until Ctrl-C or a child's exit; return the process exit code."""
    # Installed explicitly: a shell that starts us in the background ignores SIGINT, and
    # Python would inherit that instead of raising KeyboardInterrupt.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if busy := busy_ports(PORTS):
        print(
            f"run: already in use: {', '.join(busy)}; is another `make run` running? "
            "Stop it (Ctrl-C) or free the port first.",
            file=sys.stderr,
        )
        return 1
    children: list[Child] = []
    try:
        start_all(children)
        if failure := wait_ready(children, f"{BRIDGE_URL}/readyz", READY_TIMEOUT_SECONDS):
            print(f"run: the bridge is not ready: {failure}", file=sys.stderr)
            return 1
        print(f"\nBridge ready on {BRIDGE_URL} (Ctrl-C stops everything). Try:\n", flush=True)
        print(CURL_EXAMPLES, flush=True)
        print(DEV_NOTE.format(key=dev_credentials(os.environ)["BRIDGE_DEMO_KEY"]), flush=True)
        for name in unreachable_upstreams(f"{BRIDGE_URL}/readyz"):
            print(f"run: warning: {describe_down(name)}", file=sys.stderr)
        print(f"run: stopping because {wait_for_exit(children)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nrun: stopping", file=sys.stderr)
        return 0
    finally:
        stop_all(children)


if __name__ == "__main__":
    sys.exit(main())
