"""Runs OrderService alone: ``python -m services.shop [--port 50053] [--host 127.0.0.1]``."""

from __future__ import annotations

from services.serving import main
from services.shop.server import DEFAULT_PORT, start

if __name__ == "__main__":
    main("shop", start, DEFAULT_PORT)
