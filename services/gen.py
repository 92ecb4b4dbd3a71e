"""The code generator for the example services: their ``.proto`` files -> ``services/_gen``.

Run as ``python -m services.gen``. The output folder is rebuilt from scratch each time so
that a deleted proto leaves no stale module behind; it is gitignored, never committed.
"""

from __future__ import annotations

import importlib.resources
import shutil
import sys
from pathlib import Path
from typing import Final

from services import GEN_DIR

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
PROTO_ROOT: Final = REPO_ROOT / "protos"
# The benchmark backend's proto lives apart, so configs that include protos/ need no upstream
# for it.
BENCH_ROOT: Final = REPO_ROOT / "bench" / "protos"
# Likewise the shop service's proto: the README's tour registers it at run time, so it must
# stay off bridge.yaml's protos.include.
EXAMPLES_ROOT: Final = REPO_ROOT / "examples"
ROOTS: Final = (PROTO_ROOT, BENCH_ROOT, EXAMPLES_ROOT)


def include_dirs() -> list[Path]:
    """Return the protoc import roots: our proto roots, protobuf's bundled WKTs, googleapis."""
    import google.api.annotations_pb2 as annotations

    wkt = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    # annotations_pb2 lives at <root>/google/api/; its .proto sits beside it.
    googleapis = Path(annotations.__file__).resolve().parent.parent.parent
    return [*ROOTS, wkt, googleapis]


def proto_files(roots: tuple[Path, ...] = ROOTS) -> list[Path]:
    """Return every .proto under the roots, relative to its root (as protoc wants), sorted."""
    return sorted(p.relative_to(root) for root in roots for p in root.rglob("*.proto"))


def generate(out_dir: Path = GEN_DIR) -> int:
    """Compile every proto into out_dir; return protoc's exit code (0 on success)."""
    from grpc_tools import protoc

    files = proto_files()
    if not files:
        print(f"no .proto files under {PROTO_ROOT}", file=sys.stderr)
        return 1
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    args = [
        "grpc_tools.protoc",
        *(f"--proto_path={d}" for d in include_dirs()),
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(f) for f in files),
    ]
    # File names are given relative to the proto root, so protoc treats them as virtual
    # paths and the generated imports read ``demo.users.v1...``, independent of the cwd.
    return protoc.main(args)


def main() -> None:
    """Generate the code and exit with protoc's status; protoc prints its own errors."""
    code = generate()
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        sys.exit(code or 1)
    print(f"generated {len(proto_files())} proto file(s) into {GEN_DIR}")


if __name__ == "__main__":
    main()
