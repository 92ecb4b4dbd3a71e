"""Runs EchoService alone: ``python -m services.echo [--port 50052] [--host 127.0.0.1]``."""

from __future__ import annotations

from services.echo.server import DEFAULT_PORT, start
from services.serving import main

if __name__ == "__main__":
    main("echo", start, DEFAULT_PORT)
