"""Runs UserService alone: ``python -m services.users [--port 50051] [--host 127.0.0.1]``."""

from __future__ import annotations

from services.serving import main
from services.users.server import DEFAULT_PORT, start

if __name__ == "__main__":
    main("users", start, DEFAULT_PORT)
