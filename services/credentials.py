"""The demo's dev credentials: an API key, a JWT secret and an admin token for ``bridge.yaml``.

``make run`` takes them from the environment (``BRIDGE_API_KEYS``, ``BRIDGE_JWT_SECRET``,
``BRIDGE_ADMIN_TOKEN``, which turns the admin API on) or
makes them up once and keeps them in ``.bridge/dev.env`` (never committed), a file a shell
can ``source`` so that the README's tour works word for word. They are for trying Bridge on
one machine only: a deployment sets its own through the environment.

``python -m services.credentials token [--sub NAME] [--scope SCOPES]`` prints a JWT signed
with the dev secret, as the demo config's ``auth.jwt`` expects (issuer and audience
``bridge-demo``, one hour).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DEV_ENV: Final = REPO_ROOT / ".bridge" / "dev.env"
ISSUER: Final = "bridge-demo"  # the issuer and audience the committed bridge.yaml checks
DEMO_SUBJECT: Final = "demo"


def dev_credentials(environ: Mapping[str, str], path: Path = DEV_ENV) -> dict[str, str]:
    """The demo key and secret: the environment's, else the file's (made up once, if need be).

    The file only ever holds values made up here, never the environment's, so a one-off
    ``BRIDGE_JWT_SECRET=... python -m services.credentials token`` changes nothing for later.
    """
    saved = _read(path)
    made = dict(saved)
    if not saved.get("BRIDGE_DEMO_KEY") or not saved.get("BRIDGE_JWT_SECRET"):
        key = secrets.token_hex(16)
        made.update(
            BRIDGE_DEMO_KEY=key,
            BRIDGE_API_KEYS=f"{DEMO_SUBJECT}={key}",
            BRIDGE_JWT_SECRET=secrets.token_urlsafe(32),
        )
    # Added on its own, so that a dev.env from before the admin token keeps its key and secret.
    if not saved.get("BRIDGE_ADMIN_TOKEN"):
        made["BRIDGE_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    if made != saved:
        saved = made
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(0o600)  # secrets: the owner's only, before they are written
        path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in saved.items()))
    values = {name: environ.get(name) or value for name, value in saved.items()}
    if environ.get("BRIDGE_DEMO_KEY") and not environ.get("BRIDGE_API_KEYS"):
        values["BRIDGE_API_KEYS"] = f"{DEMO_SUBJECT}={environ['BRIDGE_DEMO_KEY']}"
    return values


def _read(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    values = {}
    for line in text.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name and value:
            values[name] = shlex.split(value)[0] if value.strip() else ""
    return values


def token(secret: str, subject: str, scopes: str, lifetime: int = 3600) -> str:
    """A JWT for the demo config, HS256-signed with ``secret``."""
    import jwt

    now = int(time.time())
    claims = {"sub": subject, "iss": ISSUER, "aud": ISSUER, "iat": now, "exp": now + lifetime}
    if scopes:
        claims["scope"] = scopes
    return jwt.encode(claims, secret, algorithm="HS256")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.credentials", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("token", help="print a JWT signed with the dev secret")
    make.add_argument("--sub", default="ada", help="the subject (default: ada)")
    make.add_argument("--scope", default="", help="space-separated scopes, e.g. users.admin")
    args = parser.parse_args(argv)
    secret = dev_credentials(os.environ)["BRIDGE_JWT_SECRET"]
    print(token(secret, args.sub, args.scope))
    return 0


if __name__ == "__main__":
    sys.exit(main())
