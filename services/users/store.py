"""The in-memory user directory behind UserService, seeded with two well-known users."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2, wrappers_pb2

from demo.users.v1 import users_pb2
from demo.users.v1.users_pb2 import User

# Ids become part of the resource name "users/{id}", so a slash or a space would break the
# path templates that route on it.
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def resource_name(user_id: str) -> str:
    """Return the resource name of the user with this id."""
    return f"users/{user_id}"


def id_sort_key(user_id: str) -> tuple[int, int, str]:
    """Return a key that orders numeric ids numerically ("2" before "10"), then the rest."""
    if user_id.isdigit():
        return (0, int(user_id), "")
    return (1, 0, user_id)


def _timestamp(rfc3339: str) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromJsonString(rfc3339)
    return ts


def _ada() -> User:
    profile = struct_pb2.Struct()
    profile.update({"languages": ["en", "fr"], "verified": True})
    return User(
        name=resource_name("1"),
        id="1",
        display_name="Ada Lovelace",
        email="ada@example.com",
        role=users_pb2.ROLE_ADMIN,
        # Above 2**53: a JSON number would lose precision, so it must travel as a string.
        karma=9007199254740993,
        create_time=_timestamp("2024-01-01T00:00:00Z"),
        update_time=_timestamp("2024-01-01T00:00:00Z"),
        labels={"org": "analytical"},
        avatar=b"\x89PNG\r\n",
        profile=profile,
        nickname=wrappers_pb2.StringValue(value="ada"),
        tags=["math", "poetry"],
        address=users_pb2.Address(city="London", country="UK"),
        phone="+44 1",
        session_ttl=duration_pb2.Duration(seconds=3600),
        favorite_category="books",
        age=wrappers_pb2.Int32Value(value=36),
    )


def _alan() -> User:
    return User(
        name=resource_name("2"),
        id="2",
        display_name="Alan Turing",
        email="alan@example.com",
        role=users_pb2.ROLE_MEMBER,
        karma=42,
        create_time=_timestamp("2024-06-01T00:00:00Z"),
        update_time=_timestamp("2024-06-01T00:00:00Z"),
        labels={"org": "bletchley"},
        tags=["math", "computing"],
        address=users_pb2.Address(city="Manchester", country="UK"),
        pager="1234",
        favorite_category="computing",
    )


def seed_users() -> list[User]:
    """Return fresh copies of the seeded users, "1" (Ada Lovelace) and "2" (Alan Turing)."""
    return [_ada(), _alan()]


class UserDirectory:
    """A mutable map of users by id; one per server instance, used from one event loop."""

    def __init__(self, users: list[User] | None = None) -> None:
        self._users: dict[str, User] = {}
        for user in seed_users() if users is None else users:
            self.put(user)
        # Generated ids continue after the largest numeric one and are never reused.
        numeric = [int(i) for i in self._users if i.isdigit()]
        self._next_id = max(numeric, default=0) + 1

    def get(self, user_id: str) -> User | None:
        """Return the stored user, or None."""
        return self._users.get(user_id)

    def put(self, user: User) -> None:
        """Store (insert or replace) a user under its id."""
        self._users[user.id] = user

    def delete(self, user_id: str) -> bool:
        """Remove a user; return whether it existed."""
        return self._users.pop(user_id, None) is not None

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def __iter__(self) -> Iterator[User]:
        """Iterate over the users in id order."""
        for key in sorted(self._users, key=id_sort_key):
            yield self._users[key]

    def new_id(self, reserve: bool = True) -> str:
        """Return an unused numeric id; reserve=False only previews it (for dry runs)."""
        while str(self._next_id) in self._users:
            self._next_id += 1
        user_id = str(self._next_id)
        if reserve:
            self._next_id += 1
        return user_id
