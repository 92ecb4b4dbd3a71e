"""The processes under test: the bench backend and the bridge, started, watched and stopped.

Both run as subprocesses of the bench on free loopback ports. CPU time and RSS are read from
/proc for a process and all its descendants, so ``bridge serve --workers N`` (one parent that
forks N workers) is measured as a whole.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
BENCH_PROTO: Final = ROOT / "bench" / "protos" / "demo" / "bench" / "v1" / "bench.proto"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
READY_SECONDS: Final = 60.0
STOP_SECONDS: Final = 10.0
WS_MAX_CALLS: Final = 1000
# Loopback only: never through an http_proxy from the environment.
_NO_PROXY: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(Exception):
    """The bench cannot go on (a process did not start, a tool failed): one readable line."""


class Skipped(Exception):
    """A scenario's subject is not there to measure (Envoy not installed, a config key this
    version of Bridge refuses); the message says why."""


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """The direct children of pid, from /proc/<pid>/task/*/children or a scan of /proc."""
    task_dir = Path(f"/proc/{pid}/task")
    try:
        found: list[int] = []
        for task in task_dir.iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        return found
    except FileNotFoundError:
        return [p for p in _all_pids() if _ppid(p) == pid]
    except OSError:
        return []


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _ppid(pid: int) -> int:
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, ValueError, IndexError):
        return -1


def process_tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by pid and its live descendants."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = _stat_fields(p)
        except OSError:
            continue  # exited between the listing and the read
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    """VmRSS of pid and its live descendants, summed, in MiB (shared pages count per process)."""
    kib = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
        except OSError:
            continue
    return kib / 1024


def open_files_limit(pid: int) -> int | None:
    """The soft 'Max open files' limit of a running process, or None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class Service:
    """One started subprocess, the port it serves on and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raise BenchError (with the end of its log) if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with code {code}:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still running after STOP_SECONDS."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def spawn(name: str, argv: list[str], log: Path, port: int) -> Service:
    """Start argv in the repository root, output to log, in its own session.

    Its own session: a Ctrl-C at the terminal reaches only the bench, which then stops the
    services itself, in order.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return Service(name, process, port, log)


def _python(name: str, args: list[str], log: Path, port: int) -> Service:
    """Start ``python <args>`` with the bench's own interpreter."""
    return spawn(name, [sys.executable, *args], log, port)


def wait_until(service: Service, ready: Callable[[], bool], failed: str) -> Service:
    """Wait for ``ready()``; BenchError if the service exits or takes too long.

    A service that never gets ready is stopped before the error is raised (also on Ctrl-C):
    nothing else holds it, so it would outlive the bench.
    """
    deadline = time.monotonic() + READY_SECONDS
    try:
        while not ready():
            service.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{failed}:\n{service.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        service.stop()
        raise
    return service


def _started(service: Service, what: str) -> Service:
    """Wait until the service logs that it listens."""
    return wait_until(service, lambda: "listening on" in service.log_tail(),
                       f"{what} did not start")  # fmt: skip


def start_backend(workdir: Path) -> Service:
    """Start ``python -m services.bench`` on a free port; waits until it accepts connections."""
    port = free_port()
    service = _python("backend", ["-m", "services.bench", "--port", str(port)],
                     workdir / "backend.log", port)  # fmt: skip
    return _started(service, "the bench backend")


def start_naive_hop(workdir: Path, backend_port: int) -> Service:
    """Start the naive hop of ``bench.reference`` in front of the backend, on a free port."""
    port = free_port()
    args = ["-m", "bench.reference", "hop", "--target", f"127.0.0.1:{backend_port}",
            "--port", str(port)]  # fmt: skip
    return _started(_python("naive hop", args, workdir / "hop.log", port), "the naive hop")


def write_bridge_config(workdir: Path, backend_port: int, name: str, extra: str = "") -> Path:
    """The bridge's YAML config: BenchService's proto, one upstream, room for many WS calls.

    ``extra`` is more top-level YAML (the policies of the policy scenario). Each bridge gets
    its own registry store, so two bridges of one run never share a folder.
    """
    path = workdir / f"{name}.yaml"
    path.write_text(
        "protos:\n"
        f"  include: [{BENCH_PROTO}]\n"
        f"  store: {workdir / (name + '-registry')}\n"
        "upstreams:\n"
        "  bench:\n"
        f"    targets: [127.0.0.1:{backend_port}]\n"
        "    tls: false\n"
        "services:\n"
        "  demo.bench.v1.*: bench\n"
        "limits:\n"
        f"  ws_max_calls: {WS_MAX_CALLS}\n" + extra
    )
    return path


def start_bridge(
    workdir: Path, backend_port: int, workers: int, name: str = "bridge", extra: str = ""
) -> Service:
    """Start ``bridge serve`` on a free port and wait until every worker is ready."""
    port = free_port()
    config = write_bridge_config(workdir, backend_port, name, extra)
    args = ["-m", "bridge.cli", "serve", "--config", str(config),
            "--listen", f"127.0.0.1:{port}", "--workers", str(workers)]  # fmt: skip
    service = _python(name, args, workdir / f"{name}.log", port)
    ready = f"http://127.0.0.1:{port}/readyz"  # 200 once its upstream is SERVING
    return wait_until(service, lambda: _listening(service) >= workers and ready_at(ready),
                      f"the {name} did not become ready")  # fmt: skip


def _listening(service: Service) -> int:
    """How many bridge processes have logged that they listen."""
    try:
        return service.log.read_text(errors="replace").count("bridge listening on")
    except OSError:
        return 0


def ready_at(url: str) -> bool:
    """True when a GET of url answers 200."""
    try:
        with _NO_PROXY.open(url, timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read whole."""

    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
    """POST body to url (never through a proxy); an error status is an Answer too."""
    return _send(urllib.request.Request(url, data=body, headers=headers, method="POST"))


def get(url: str) -> Answer:
    """GET url (never through a proxy); an error status is an Answer too."""
    return _send(urllib.request.Request(url, method="GET"))


def _send(request: urllib.request.Request) -> Answer:
    url = request.full_url
    try:
        with _NO_PROXY.open(request, timeout=10) as response:
            return Answer(int(response.status), _lower(response.headers.items()),
                          response.read())  # fmt: skip
    except urllib.error.HTTPError as error:
        return Answer(error.code, _lower(error.headers.items()), error.read())
    except (urllib.error.URLError, OSError) as error:
        raise BenchError(f"{request.get_method()} {url} failed: {error}") from None


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in items}
