"""Functional tests of the example gRPC services, called in-process with real grpc.aio stubs."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services import GEN_DIR
from services.gen import generate

if not all((GEN_DIR / d).is_dir() for d in ("demo", "shop")):  # make install has not run yet
    assert generate() == 0, "protoc failed"

from services.echo.server import start as start_echo
from services.shop.server import start as start_shop
from services.users import listing
from services.users.server import start as start_users

from demo.echo.v1 import echo_pb2, echo_pb2_grpc
from demo.users.v1 import users_pb2, users_pb2_grpc
from shop.v1 import orders_pb2, orders_pb2_grpc

Code = grpc.StatusCode
UsersStub = users_pb2_grpc.UserServiceStub
EchoStub = echo_pb2_grpc.EchoServiceStub
StartFn = Callable[[int], Awaitable[tuple[grpc.aio.Server, int]]]


@asynccontextmanager
async def serving(start: StartFn) -> AsyncIterator[grpc.aio.Channel]:
    """Start a service on a free port and yield a channel to it; stop it afterwards."""
    server, port = await start(0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


@pytest.fixture
async def users() -> AsyncIterator[UsersStub]:
    async with serving(start_users) as channel:
        yield UsersStub(channel)


@pytest.fixture
async def echo() -> AsyncIterator[EchoStub]:
    async with serving(start_echo) as channel:
        yield EchoStub(channel)


async def status_of(call: Any) -> grpc.aio.AioRpcError:
    """Await a call that must fail and return its error."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll an async check until it returns true; fail after timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def create(users: UsersStub, name: str, **fields: Any) -> users_pb2.User:
    """Create a user with this display name and CreateUserRequest fields."""
    return await users.CreateUser(
        users_pb2.CreateUserRequest(user={"display_name": name}, **fields)
    )


async def update(users: UsersStub, user: dict[str, Any], *paths: str) -> users_pb2.User:
    """Update a user from User fields, with these update_mask paths."""
    request = users_pb2.UpdateUserRequest(user=user, update_mask={"paths": list(paths)})
    return await users.UpdateUser(request)


async def test_get_seeded_user(users: UsersStub) -> None:
    ada = await users.GetUser(users_pb2.GetUserRequest(id="1"))
    assert (ada.name, ada.display_name, ada.karma) == ("users/1", "Ada Lovelace", 2**53 + 1)
    assert ada.role == users_pb2.ROLE_ADMIN and ada.labels["org"] == "analytical"
    assert ada.WhichOneof("contact") == "phone" and ada.phone == "+44 1"
    assert ada.nickname.value == "ada" and ada.age.value == 36
    assert ada.profile["verified"] is True and list(ada.profile["languages"]) == ["en", "fr"]
    assert ada.avatar == b"\x89PNG\r\n" and ada.session_ttl.seconds == 3600
    alan = await users.GetUser(users_pb2.GetUserRequest(id="2"))
    assert alan.WhichOneof("contact") == "pager" and not alan.HasField("nickname")


MARCH_2024 = timestamp_pb2.Timestamp(seconds=1709251200)  # between the two seeds' create_time
# fields of ListUsersRequest -> the ids listed
FILTERS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "none": ({}, ["1", "2"]),
    "role": ({"role": users_pb2.ROLE_MEMBER}, ["2"]),
    "one tag": ({"tags": ["poetry"]}, ["1"]),
    "every tag": ({"tags": ["math", "computing"]}, ["2"]),
    "shared tag": ({"tags": ["math"]}, ["1", "2"]),
    "org": ({"org": "bletchley"}, ["2"]),
    "city": ({"filter": {"city": "London"}}, ["1"]),
    "created after": ({"filter": {"created_after": MARCH_2024}}, ["2"]),
    "min karma": ({"min_karma": 100}, ["1"]),
    "no match": ({"org": "bletchley", "role": users_pb2.ROLE_ADMIN}, []),
}


@pytest.mark.parametrize(("fields", "ids"), FILTERS.values(), ids=FILTERS.keys())
async def test_list_filters(users: UsersStub, fields: dict[str, Any], ids: list[str]) -> None:
    page = await users.ListUsers(users_pb2.ListUsersRequest(**fields))
    assert [u.id for u in page.users] == ids
    assert page.total_size == len(ids) and page.next_page_token == ""


async def test_list_pages_in_id_order(users: UsersStub) -> None:
    for n in range(3, 12):
        await create(users, f"u{n}")
    seen: list[str] = []
    token = ""
    while True:
        page = await users.ListUsers(users_pb2.ListUsersRequest(page_size=4, page_token=token))
        assert page.total_size == 11 and len(page.users) <= 4
        seen += [u.id for u in page.users]
        if not (token := page.next_page_token):
            break
    assert seen == [str(n) for n in range(1, 12)]  # numeric ids sort numerically


@pytest.mark.parametrize(("asked", "used"), [(0, 10), (1, 1), (100, 100), (101, 100)])
def test_page_size_default_and_cap(asked: int, used: int) -> None:
    assert listing.page_size(users_pb2.ListUsersRequest(page_size=asked)) == used


async def test_get_attachment_keeps_slashes(users: UsersStub) -> None:
    att = await users.GetAttachment(users_pb2.GetAttachmentRequest(id="1", path="a/b/c.txt"))
    assert (att.path, att.content, att.size) == ("a/b/c.txt", b"attachment a/b/c.txt of user 1", 30)


async def test_create_with_chosen_and_generated_ids(users: UsersStub) -> None:
    grace = await create(users, "Grace", user_id="grace")
    assert (grace.name, grace.id) == ("users/grace", "grace")
    assert grace.create_time == grace.update_time and grace.create_time.seconds > 0
    generated = await create(users, "X")
    assert generated.id == "3" and generated.name == "users/3"
    assert (await users.GetUser(users_pb2.GetUserRequest(id="grace"))).display_name == "Grace"


async def test_create_validate_only_stores_nothing(users: UsersStub) -> None:
    assert (await create(users, "Dry", validate_only=True)).id == "3"
    assert (await users.ListUsers(users_pb2.ListUsersRequest())).total_size == 2
    assert (await create(users, "Wet")).id == "3"


async def test_update_with_mask_touches_only_named_fields(users: UsersStub) -> None:
    patch = {"name": "users/2", "display_name": "Alan M. Turing", "email": "ignored@x"}
    updated = await update(users, patch, "display_name")
    assert updated.display_name == "Alan M. Turing" and updated.email == "alan@example.com"
    assert updated.update_time.ToNanoseconds() > updated.create_time.ToNanoseconds()
    assert (await users.GetUser(users_pb2.GetUserRequest(id="2"))) == updated


async def test_update_replaces_lists_and_oneofs(users: UsersStub) -> None:
    patch = {"name": "users/2", "tags": ["crypto"], "phone": "+4", "address": {"city": "Wilmslow"}}
    updated = await update(users, patch, "tags", "phone", "pager", "address.city")
    assert list(updated.tags) == ["crypto"] and updated.WhichOneof("contact") == "phone"
    assert (updated.address.city, updated.address.country) == ("Wilmslow", "UK")
    # lowerCamelCase paths (the JSON spelling) are accepted as well as proto names.
    updated = await update(users, {"name": "users/2", "favorite_category": "x"}, "favoriteCategory")
    assert updated.favorite_category == "x"


async def test_update_without_mask_replaces_mutable_fields(users: UsersStub) -> None:
    before = await users.GetUser(users_pb2.GetUserRequest(id="1"))
    updated = await update(users, {"name": "users/1", "id": "999", "display_name": "Countess"})
    assert (updated.id, updated.name, updated.display_name) == ("1", "users/1", "Countess")
    assert updated.email == "" and updated.karma == 0 and not updated.HasField("profile")
    assert updated.create_time == before.create_time


async def test_delete_is_per_server(users: UsersStub) -> None:
    assert await users.DeleteUser(users_pb2.DeleteUserRequest(id="1")) == empty_pb2.Empty()
    err = await status_of(users.GetUser(users_pb2.GetUserRequest(id="1")))
    assert err.code() == Code.NOT_FOUND
    async with serving(start_users) as channel:  # a new server starts from the seeds again
        other = UsersStub(channel)
        assert (await other.GetUser(users_pb2.GetUserRequest(id="1"))).id == "1"


async def test_ban(users: UsersStub) -> None:
    banned = await users.BanUser(users_pb2.BanUserRequest(id="2", reason="spam", duration={}))
    assert banned.banned and banned.ban_reason == "spam"
    assert (await users.GetUser(users_pb2.GetUserRequest(id="2"))).banned


def _create(user_id: str) -> dict[str, Any]:
    return {"user": {"display_name": "A"}, "user_id": user_id}


def _update(paths: list[str], **user: str) -> dict[str, Any]:
    return {"user": user, "update_mask": {"paths": paths}}


INVALID, NOT_FOUND = Code.INVALID_ARGUMENT, Code.NOT_FOUND
# method, fields of its request message, expected code, a part of the expected message
USER_ERRORS: dict[str, tuple[str, dict[str, Any], Code, str]] = {
    "get missing": ("GetUser", {"id": "x"}, NOT_FOUND, "user 'x' not found"),
    "negative page size": ("ListUsers", {"page_size": -1}, INVALID, "page_size"),
    "garbage token": ("ListUsers", {"page_token": "not a token!"}, INVALID, "page_token"),
    "non-numeric token": ("ListUsers", {"page_token": "bGVmdA"}, INVALID, "page_token"),
    "no display name": ("CreateUser", {"user": {"email": "a@b"}}, INVALID, "display_name"),
    "existing id": ("CreateUser", _create("1"), Code.ALREADY_EXISTS, "user '1' already exists"),
    "slash in id": ("CreateUser", _create("a/b"), INVALID, "user_id"),
    "unknown path": ("UpdateUser", _update(["nope"], name="users/2"), INVALID, "nope"),
    "sub-path of scalar": ("UpdateUser", _update(["tags.x"], name="users/2"), INVALID, ""),
    "output only": ("UpdateUser", _update(["create_time"], name="users/2"), INVALID, "output"),
    "update missing": ("UpdateUser", _update([], name="users/9"), NOT_FOUND, ""),
    "update no name": ("UpdateUser", _update([], display_name="x"), INVALID, "user.name"),
    "delete missing": ("DeleteUser", {"id": "9"}, NOT_FOUND, "user '9' not found"),
    "ban missing": ("BanUser", {"id": "9"}, NOT_FOUND, ""),
    "attachment of nobody": ("GetAttachment", {"id": "9", "path": "a"}, NOT_FOUND, ""),
}


@pytest.mark.parametrize(
    ("method", "fields", "code", "needle"), USER_ERRORS.values(), ids=USER_ERRORS.keys()
)
async def test_user_errors(
    users: UsersStub, method: str, fields: dict[str, Any], code: Code, needle: str
) -> None:
    request = getattr(users_pb2, f"{method}Request")(**fields)
    err = await status_of(getattr(users, method)(request))
    assert err.code() == code and needle in (err.details() or "")


async def test_echo_reflects_request_and_metadata(echo: EchoStub) -> None:
    request = echo_pb2.EchoRequest(
        message="hi", payload=b"\x00\xff", number=-(2**63), big=2**64 - 1
    )
    request.kinds[:] = [echo_pb2.KIND_A, echo_pb2.KIND_B]
    request.inner.child.MergeFrom(echo_pb2.EchoRequest.Inner(note="inner", level=2))
    request.named["k"].note, request.number_choice = "v", 7
    metadata = (("x-custom", "Value"), ("x-trace-bin", b"\x00\x01\x02"))
    reply = await echo.Echo(request, metadata=metadata)
    assert (reply.message, reply.payload, reply.request) == ("hi", b"\x00\xff", request)
    assert reply.metadata["x-custom"] == "Value"
    assert reply.metadata["x-trace-bin"] == base64.b64encode(b"\x00\x01\x02").decode()
    assert "user-agent" in reply.metadata and reply.peer.startswith("ipv4:127.0.0.1:")
    assert reply.deadline_remaining == 0  # no deadline was set
    reply = await echo.Echo(echo_pb2.EchoRequest(), timeout=5)
    assert 3 < reply.deadline_remaining <= 5.5


async def test_echo_sends_requested_headers_and_trailers(echo: EchoStub) -> None:
    sent = {"x-h": "1", "x-raw-bin": base64.b64encode(b"\x01").decode()}
    call = echo.Echo(echo_pb2.EchoRequest(response_headers=sent, response_trailers={"x-t": "2"}))
    headers = await call.initial_metadata()
    assert headers["x-h"] == "1" and headers["x-raw-bin"] == b"\x01"
    await call
    assert (await call.trailing_metadata())["x-t"] == "2"


@pytest.mark.parametrize(
    "headers",
    [{"bad key": "v"}, {"grpc-status": "0"}, {"x-h": "line\r\nbreak"}, {"x-b-bin": "%%%"}],
    ids=["space in key", "reserved key", "CR/LF in value", "bad base64"],
)
async def test_echo_rejects_unsendable_metadata(echo: EchoStub, headers: dict[str, str]) -> None:
    err = await status_of(echo.Echo(echo_pb2.EchoRequest(response_headers=headers)))
    assert err.code() == Code.INVALID_ARGUMENT


async def test_fail_with_code_and_default_message(echo: EchoStub) -> None:
    err = await status_of(echo.Fail(echo_pb2.FailRequest(code=5)))
    assert err.code() == Code.NOT_FOUND and err.details() == "failure 5 requested"
    err = await status_of(echo.Fail(echo_pb2.FailRequest(code=14, message="down")))
    assert err.code() == Code.UNAVAILABLE and err.details() == "down"
    assert await echo.Fail(echo_pb2.FailRequest(code=0)) == empty_pb2.Empty()
    err = await status_of(echo.Fail(echo_pb2.FailRequest(code=99)))
    assert err.code() == Code.INVALID_ARGUMENT


async def test_fail_with_rich_details(echo: EchoStub) -> None:
    err = await status_of(echo.Fail(echo_pb2.FailRequest(code=3, with_details=True)))
    raw = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    assert (status.code, status.message) == (3, "failure 3 requested")
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    assert [(v.field, v.description) for v in detail.field_violations] == [("code", "requested")]


async def test_tick_streams_events(echo: EchoStub) -> None:
    call = echo.Tick(echo_pb2.TickRequest(count=3, interval_ms=10, prefix="t", payload_size=5))
    assert (await call.initial_metadata())["x-tick-stream"] == "started"
    events = [event async for event in call]
    assert [(e.seq, e.text) for e in events] == [(1, "t1"), (2, "t2"), (3, "t3")]
    assert all(e.payload == b"xxxxx" and e.time.seconds > 0 for e in events)
    assert await call.code() == Code.OK


async def test_tick_fail_after(echo: EchoStub) -> None:
    call = echo.Tick(echo_pb2.TickRequest(count=10, fail_after=2))
    assert [(await call.read()).seq for _ in range(2)] == [1, 2]
    assert (await call.code(), await call.details()) == (Code.UNAVAILABLE, "tick source failed")


async def test_sum_client_stream(echo: EchoStub) -> None:
    reply = await echo.Sum(iter([echo_pb2.SumRequest(value=v) for v in (1, 2, 3, 2**40)]))
    assert (reply.total, reply.count) == (6 + 2**40, 4)
    assert await echo.Sum(iter(())) == echo_pb2.SumResponse()


async def test_chat_replies_to_each_message_at_once(echo: EchoStub) -> None:
    call = echo.Chat()
    for n, text in enumerate(["hello", "again"], start=1):
        await call.write(echo_pb2.ChatMessage(user="ada", text=text))
        # Read before writing the next one: a reply that waited for the half-close would hang.
        reply = await asyncio.wait_for(call.read(), timeout=5)
        assert (reply.user, reply.text, reply.seq) == ("echo", f"ada: {text}", n)
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


async def stats(echo: EchoStub) -> echo_pb2.Stats:
    return await echo.GetStats(empty_pb2.Empty())


async def test_stats_count_completed_calls(echo: EchoStub) -> None:
    await echo.Echo(echo_pb2.EchoRequest())
    await status_of(echo.Fail(echo_pb2.FailRequest(code=13)))
    assert await stats(echo) == echo_pb2.Stats(started=2, completed=2)
    await echo.ResetStats(empty_pb2.Empty())
    assert await stats(echo) == echo_pb2.Stats()


async def _stat_is(echo: EchoStub, counter: str, value: int) -> bool:
    return bool(getattr(await stats(echo), counter) == value)


async def _assert_one_cancel(echo: EchoStub, method: str) -> None:
    """Wait until the server has counted one cancelled call, of this method."""
    await eventually(lambda: _stat_is(echo, "cancelled", 1))
    final = await stats(echo)
    assert (final.completed, final.active, dict(final.cancelled_by_method)) == (0, 0, {method: 1})


async def test_stats_count_client_cancel(echo: EchoStub) -> None:
    call = echo.Echo(echo_pb2.EchoRequest(sleep_ms=5000))
    await eventually(lambda: _stat_is(echo, "active", 1))
    call.cancel()
    await _assert_one_cancel(echo, "Echo")


async def test_stats_count_deadline_as_cancel(echo: EchoStub) -> None:
    err = await status_of(echo.Echo(echo_pb2.EchoRequest(sleep_ms=5000), timeout=0.2))
    assert err.code() == Code.DEADLINE_EXCEEDED
    await _assert_one_cancel(echo, "Echo")


async def test_stats_count_cancelled_stream(echo: EchoStub) -> None:
    call = echo.Tick(echo_pb2.TickRequest(count=0, interval_ms=20))
    await call.read()
    call.cancel()
    await _assert_one_cancel(echo, "Tick")


@pytest.mark.parametrize(
    ("start", "service"),
    [
        (start_users, "demo.users.v1.UserService"),
        (start_echo, "demo.echo.v1.EchoService"),
        (start_shop, "demo.shop.v1.OrderService"),
    ],
    ids=["users", "echo", "shop"],
)
async def test_health_serving(start: StartFn, service: str) -> None:
    async with serving(start) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", service):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        err = await status_of(stub.Check(health_pb2.HealthCheckRequest(service="no.Such")))
        assert err.code() == Code.NOT_FOUND


async def test_reflection_lists_echo() -> None:
    async with serving(start_echo) as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
    names = {s.name for s in reply.list_services_response.service}
    assert "demo.echo.v1.EchoService" in names and "grpc.health.v1.Health" in names


async def test_shop_knows_its_orders_only() -> None:
    # The happy paths run through the bridge in tests/test_tour.py (the README's registration).
    async with serving(start_shop) as channel:
        shop = orders_pb2_grpc.OrderServiceStub(channel)
        assert (await shop.GetOrder(orders_pb2.GetOrderRequest(id="1002"))).item == "cup"
        err = await status_of(shop.GetOrder(orders_pb2.GetOrderRequest(id="9")))
        assert err.code() == Code.NOT_FOUND and err.details() == "no order '9'"
        track = shop.TrackOrder(orders_pb2.TrackOrderRequest(id="9"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in track:
                pass
        assert info.value.code() == Code.NOT_FOUND
