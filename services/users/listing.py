"""Filtering and paging for ListUsers: the request's filters and the opaque page token."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Final

from demo.users.v1 import users_pb2

DEFAULT_PAGE_SIZE: Final = 10
MAX_PAGE_SIZE: Final = 100


class ListingError(ValueError):
    """A ListUsers request that cannot be served; the message names the field."""


def page_size(request: users_pb2.ListUsersRequest) -> int:
    """Return the effective page size: default when 0, capped at the maximum."""
    if request.page_size < 0:
        raise ListingError(f"page_size must not be negative, got {request.page_size}")
    return min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(offset: int) -> str:
    """Return the page token for an offset: URL-safe base64 without padding."""
    # Opaque on purpose, so clients do not build tokens; unpadded so it needs no URL escaping.
    return base64.urlsafe_b64encode(str(offset).encode()).rstrip(b"=").decode()


def decode_page_token(token: str) -> int:
    """Return the offset a page token stands for (0 for the empty token)."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        text = raw.decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ListingError(f"invalid page_token {token!r}") from None
    if not text.isdigit():
        raise ListingError(f"invalid page_token {token!r}")
    return int(text)


def matches(user: users_pb2.User, request: users_pb2.ListUsersRequest) -> bool:
    """Return whether a user passes every filter set in the request."""
    if request.role and user.role != request.role:
        return False
    if not set(request.tags) <= set(user.tags):
        return False
    if request.org and user.labels.get("org") != request.org:
        return False
    if request.filter.city and user.address.city != request.filter.city:
        return False
    if request.filter.HasField("created_after") and not (
        user.create_time.ToNanoseconds() > request.filter.created_after.ToNanoseconds()
    ):
        return False
    # 0 is "unset" in proto3, and users with negative karma should not vanish from it.
    return not (request.min_karma and user.karma < request.min_karma)


def list_page(
    users: Iterable[users_pb2.User], request: users_pb2.ListUsersRequest
) -> users_pb2.ListUsersResponse:
    """Return the requested page of the users that match, which are given in id order."""
    size = page_size(request)
    offset = decode_page_token(request.page_token)
    selected = [u for u in users if matches(u, request)]
    end = offset + size
    return users_pb2.ListUsersResponse(
        users=selected[offset:end],
        next_page_token=encode_page_token(end) if end < len(selected) else "",
        total_size=len(selected),
    )
