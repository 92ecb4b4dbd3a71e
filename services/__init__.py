"""Example internal gRPC services that the bridge talks to, one sub-package each.

Importing this package puts the generated code (``services/_gen``, written by
``python -m services.gen``) on ``sys.path`` so that ``import demo.users.v1.users_pb2`` works.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

GEN_DIR: Final = Path(__file__).resolve().parent / "_gen"

# Generated modules import each other by their proto package (``demo.users.v1``), so the
# folder that holds them must be an import root rather than a sub-package of ``services``.
if str(GEN_DIR) not in sys.path:
    sys.path.insert(0, str(GEN_DIR))
