"""gRPC metadata <-> the string maps of EchoRequest and EchoResponse."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from typing import Final

# The key grammar of the gRPC HTTP/2 protocol; "grpc-" names are reserved for the library.
_KEY: Final = re.compile(r"[0-9a-z_.\-]+")
_PRINTABLE_ASCII: Final = re.compile(r"[\x20-\x7e]*")

Metadata = tuple[tuple[str, str | bytes], ...]


def metadata_to_map(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """Return metadata as a map: keys lowercased, binary values base64, repeats comma-joined."""
    result: dict[str, str] = {}
    for key, value in metadata or ():
        key = key.lower()
        text = base64.b64encode(value).decode() if isinstance(value, bytes) else value
        # Repeated keys are joined as HTTP joins repeated headers.
        result[key] = f"{result[key]},{text}" if key in result else text
    return result


def map_to_metadata(values: Mapping[str, str], field: str) -> Metadata:
    """Return a request map as metadata to send; "-bin" values are given in base64.

    Raises ValueError naming the field and key when gRPC would refuse to send an entry.
    """
    return tuple(_entry(key, value, field) for key, value in sorted(values.items()))


def _entry(key: str, value: str, field: str) -> tuple[str, str | bytes]:
    key = key.lower()
    if not _KEY.fullmatch(key) or key.startswith("grpc-"):
        raise ValueError(f"{field}: invalid metadata key {key!r}")
    if key.endswith("-bin"):
        try:
            # Padding is optional, as in the JSON mapping of bytes.
            return key, base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{field}[{key!r}]: value must be base64") from None
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise ValueError(f"{field}[{key!r}]: value must be printable ASCII")
    return key, value
