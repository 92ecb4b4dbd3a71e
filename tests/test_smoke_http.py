"""A first end-to-end pass: the bridge serves the example services over HTTP."""

from __future__ import annotations


async def test_get_user(demo):
    status, body, headers = await demo.json("GET", "/v1/users/1")
    assert status == 200
    assert body["displayName"] == "Ada Lovelace"
    assert body["karma"] == "9007199254740993"
    assert headers["X-Request-Id"]
