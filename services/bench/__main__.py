"""Runs BenchService alone: ``python -m services.bench [--port 50053] [--host 127.0.0.1]``."""

from __future__ import annotations

from services.bench.server import DEFAULT_PORT, start
from services.serving import main

if __name__ == "__main__":
    main("bench", start, DEFAULT_PORT)
