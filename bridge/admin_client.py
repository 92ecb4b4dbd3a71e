"""``bridge protos add|list|remove``: a thin client of the admin API."""

from __future__ import annotations

import argparse
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

_IMPORT: Final = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)
TOKEN_ENV: Final = "BRIDGE_ADMIN_TOKEN"


class ClientError(Exception):
    """A problem the command reports in one line and exits on."""


def add_commands(commands: Any) -> None:
    """Register ``protos add|list|remove`` under the ``bridge`` command."""
    protos = commands.add_parser("protos", help="register .proto files with a running bridge")
    actions = protos.add_subparsers(required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="upload .proto files and their local imports",
        description="Upload .proto files (and the imports found under the proto root) to a "
        "running bridge, which compiles them and serves their methods at once. The admin "
        f"token comes from {TOKEN_ENV}.",
    )
    add.add_argument(
        "files", nargs="+", metavar="FILE",
        help="the .proto files to register, as paths under the proto root (see -I)",
    )  # fmt: skip
    add.add_argument(
        "--name", required=True,
        help="the registration's name: adding the same name again replaces it",
    )  # fmt: skip
    where = add.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--upstream", help="the name of an upstream in the bridge's config that serves them"
    )
    where.add_argument(
        "--target", action="append",
        help="HOST:PORT of the gRPC server that serves them (repeat for several)",
    )  # fmt: skip
    add.add_argument(
        "-I", dest="root", default=".", metavar="ROOT",
        help="the proto root the files and their imports are named from (default: .)",
    )  # fmt: skip
    add.set_defaults(run=_add)
    listing = actions.add_parser("list", help="list the registrations")
    listing.set_defaults(run=_list)
    remove = actions.add_parser("remove", help="remove a registration and its routes")
    remove.add_argument("name", help="the registration's name, as protos list shows it")
    remove.set_defaults(run=_remove)
    for parser in (add, listing, remove):
        parser.add_argument(
            "--admin", default="http://127.0.0.1:8080", metavar="URL",
            help="the running bridge's URL (default: http://127.0.0.1:8080)",
        )  # fmt: skip


def collect(files: list[str], root: Path) -> dict[str, str]:
    """The files by their names relative to ``root``, plus every local import, recursively."""
    found: dict[str, str] = {}
    pending = [_name_under(f, root) for f in files]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        path = root / name
        try:
            found[name] = path.read_text()
        except OSError as exc:
            raise ClientError(f"{path}: {exc.strerror or exc}") from None
        # Imports not found under the root are the bridge's to resolve (bundled or registered).
        pending.extend(i for i in _IMPORT.findall(found[name]) if (root / i).is_file())
    return found


def _name_under(file: str, root: Path) -> str:
    if (root / file).is_file() and not os.path.isabs(file):
        return Path(file).as_posix()
    relative = os.path.relpath(Path(file).resolve(), root.resolve())
    if relative.startswith(".."):
        raise ClientError(f"{file} is not under the proto root {root} (use -I)")
    return Path(relative).as_posix()


def _add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "files": collect(args.files, Path(args.root))}
    if args.upstream:
        body["upstream"] = args.upstream
    else:
        body["targets"] = args.target
    status, reply = _call(args.admin, "POST", "/admin/protos", body)
    print(
        f"{'replaced' if status == 200 else 'registered'} '{reply['name']}': "
        f"{', '.join(reply['services']) or 'no services'}"
    )
    for route in reply["routes"]:
        print(f"  {route['verb']:7} {route['path']}  ->  {route['method']}")
    return 0


def _list(args: argparse.Namespace) -> int:
    _, reply = _call(args.admin, "GET", "/admin/protos")
    if not reply["protos"]:
        print("no registrations")
    for item in reply["protos"]:
        where = item.get("upstream") or ", ".join(item.get("targets", []))
        print(f"{item['name']}  ({where})  {', '.join(item['services'])}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    _call(args.admin, "DELETE", f"/admin/protos/{args.name}")
    print(f"removed '{args.name}'")
    return 0


def _call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise ClientError(f"set {TOKEN_ENV} to the bridge's admin token")
    request = urllib.request.Request(
        base.rstrip("/") + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ClientError(_explain(exc)) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"cannot reach the bridge at {base}: {exc}") from None


def _explain(exc: urllib.error.HTTPError) -> str:
    try:
        status = json.loads(exc.read())
    except ValueError:
        return f"HTTP {exc.code}"
    errors = status.get("errors", [])
    # A compile error's message repeats the first diagnostic that the list below holds.
    message = f"{len(errors)} compile error(s):" if errors else status.get("message", "")
    lines = [f"HTTP {exc.code}: {message}"]
    for error in errors:
        lines.append(f"  {error['file']}:{error['line']}:{error['column']}: {error['message']}")
    return "\n".join(lines)
