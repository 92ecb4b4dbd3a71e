"""The UserService implementation: request validation and status codes over UserDirectory."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import empty_pb2

from services.serving import Context, invalid, now
from services.users.listing import ListingError, list_page
from services.users.store import ID_PATTERN, UserDirectory, resource_name
from services.users.update import MaskError, apply_update

from demo.users.v1 import users_pb2, users_pb2_grpc


async def _not_found(context: Context, user_id: str) -> NoReturn:
    await context.abort(grpc.StatusCode.NOT_FOUND, f"user {user_id!r} not found")
    raise AssertionError("unreachable: abort raises")


def _id_from_name(user: users_pb2.User) -> str:
    """Return the id that a request's user names: from "users/{id}", else its id field."""
    prefix = "users/"
    if user.name.startswith(prefix):
        return user.name[len(prefix) :]
    return "" if user.name else user.id


class UserServicer(users_pb2_grpc.UserServiceServicer):
    """demo.users.v1.UserService over an in-memory directory owned by this instance."""

    def __init__(self, directory: UserDirectory | None = None) -> None:
        self.directory = directory if directory is not None else UserDirectory()

    async def _existing(self, user_id: str, context: Context) -> users_pb2.User:
        user = self.directory.get(user_id)
        if user is None:
            await _not_found(context, user_id)
        return user

    async def GetUser(self, request: users_pb2.GetUserRequest, context: Context) -> users_pb2.User:
        return await self._existing(request.id, context)

    async def ListUsers(
        self, request: users_pb2.ListUsersRequest, context: Context
    ) -> users_pb2.ListUsersResponse:
        try:
            return list_page(self.directory, request)
        except ListingError as exc:
            await invalid(context, str(exc))

    async def CreateUser(
        self, request: users_pb2.CreateUserRequest, context: Context
    ) -> users_pb2.User:
        if not request.user.display_name:
            await invalid(context, "user.display_name is required")
        user_id = request.user_id
        if user_id and not ID_PATTERN.fullmatch(user_id):
            await invalid(context, f"user_id {user_id!r} must be 1-63 letters, digits, '-' or '_'")
        if user_id in self.directory:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"user {user_id!r} already exists")
        user = users_pb2.User()
        user.CopyFrom(request.user)
        # A dry run shows the id it would get without taking it from the sequence.
        user.id = user_id or self.directory.new_id(reserve=not request.validate_only)
        user.name = resource_name(user.id)
        stamp = now()
        user.create_time.CopyFrom(stamp)
        user.update_time.CopyFrom(stamp)
        if not request.validate_only:
            self.directory.put(user)
        return user

    async def UpdateUser(
        self, request: users_pb2.UpdateUserRequest, context: Context
    ) -> users_pb2.User:
        user_id = _id_from_name(request.user)
        if not user_id:
            await invalid(context, 'user.name must be "users/{id}"')
        existing = await self._existing(user_id, context)
        try:
            updated = apply_update(existing, request.user, request.update_mask)
        except MaskError as exc:
            await invalid(context, str(exc))
        updated.update_time.CopyFrom(now())
        self.directory.put(updated)
        return updated

    async def DeleteUser(
        self, request: users_pb2.DeleteUserRequest, context: Context
    ) -> empty_pb2.Empty:
        if not self.directory.delete(request.id):
            await _not_found(context, request.id)
        return empty_pb2.Empty()

    async def BanUser(self, request: users_pb2.BanUserRequest, context: Context) -> users_pb2.User:
        existing = await self._existing(request.id, context)
        if request.duration.seconds < 0 or request.duration.nanos < 0:
            await invalid(context, "duration must not be negative")
        user = users_pb2.User()
        user.CopyFrom(existing)
        user.banned = True
        user.ban_reason = request.reason
        user.update_time.CopyFrom(now())
        self.directory.put(user)
        return user

    async def GetAttachment(
        self, request: users_pb2.GetAttachmentRequest, context: Context
    ) -> users_pb2.Attachment:
        await self._existing(request.id, context)
        content = f"attachment {request.path} of user {request.id}".encode()
        return users_pb2.Attachment(path=request.path, content=content, size=len(content))
