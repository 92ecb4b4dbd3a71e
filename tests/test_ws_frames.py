"""Unit tests of bridge.ws.frames.parse: client frames, the frames refused, and repeated names."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.ws.frames import Frame, FrameError, parse

ECHO = "demo.echo.v1.EchoService/Echo"

PARSED = [
    pytest.param(f'{{"id": 1, "method": "{ECHO}", "message": {{}}}}',
                 Frame(1, ECHO, {}, True), id="start"),
    pytest.param('{"id": "a", "message": null}', Frame("a", None, None, True), id="null-message"),
    pytest.param('{"id": 2, "end": true}', Frame(2, end=True), id="end"),
    pytest.param('{"id": 2, "cancel": true}', Frame(2, cancel=True), id="cancel"),
    pytest.param('{"id": 2, "cancel": 1, "end": "yes"}', Frame(2), id="flags-only-when-true"),
    pytest.param('{"id": 18446744073709551615}', Frame(2**64 - 1), id="64-bit-id"),
    pytest.param('{"id": -3, "extra": [1, 2]}', Frame(-3), id="unknown-members-ignored"),
    pytest.param('{"id": 1, "metadata": {"k": "v"}, "timeout": 2.5}',
                 Frame(1, metadata={"k": "v"}, timeout=2.5), id="metadata-timeout"),
    pytest.param('{"id": 1, "message": {"a": 1}, "other": {"a": 2}}',
                 Frame(1, message={"a": 1}, has_message=True), id="same-name-in-two-values"),
    pytest.param('{"id": 1, "message": {"a": 1, "a": 2}}',
                 Frame(1, message={"a": 2}, has_message=True,
                       problem='frame is not valid JSON: duplicate key "a"'),
                 id="repeat-inside-message-is-the-calls-problem"),
    pytest.param(f'{{"id": 1, "method": "{ECHO}", "metadata": {{"k": "1", "k": "2"}}}}',
                 Frame(1, ECHO, metadata={"k": "2"},
                       problem='frame is not valid JSON: duplicate key "k"'),
                 id="repeat-inside-metadata"),
]  # fmt: skip


@pytest.mark.parametrize("text, frame", PARSED)
def test_parsed(text: str, frame: Frame) -> None:
    assert parse(text) == frame


REFUSED = [
    pytest.param("not json", "not JSON", id="not-json"),
    pytest.param("", "not JSON", id="empty"),
    pytest.param("[1]", "JSON object", id="array"),
    pytest.param('"id"', "JSON object", id="string"),
    pytest.param("{}", '"id"', id="no-id"),
    pytest.param('{"id": null}', '"id"', id="null-id"),
    pytest.param('{"id": true}', '"id"', id="bool-id"),
    pytest.param('{"id": 1.5}', '"id"', id="float-id"),
    pytest.param('{"id": [1]}', '"id"', id="list-id"),
    pytest.param('{"id": 99999999999999999999}', "64 bits", id="id-over-64-bits"),  # orjson: float
    pytest.param('{"id": 1, "method": 7}', '"method"', id="number-method"),
    pytest.param('{"id": 1, "id": 2}', 'duplicate key "id"', id="repeated-id"),
    pytest.param('{"id": 1, "message": {}, "message": {}}', 'duplicate key "message"',
                 id="repeated-member"),
    pytest.param('[{"a": 1, "a": 2}]', 'duplicate key "a"', id="repeat-in-a-non-object"),
    pytest.param('{"id": 1, "message": {"a": NaN}}', "not JSON", id="bare-nan"),
    pytest.param('{"id": 1, "m": "\\ud800"}', "not JSON", id="lone-surrogate"),
    pytest.param('{"id": 1, "m":' + '{"a":' * 1010 + "1" + "}" * 1011, "not JSON",
                 id="too-deep-with-a-repeat-check"),
    pytest.param('{"id": 1, "m": ' + "[" * 1100 + "]" * 1100 + "}", "not JSON", id="too-deep"),
]  # fmt: skip


@pytest.mark.parametrize("text, says", REFUSED)
def test_refused(text: str, says: str) -> None:
    with pytest.raises(FrameError) as refused:
        parse(text)
    assert refused.value.code == 3
    assert says in refused.value.message


def test_a_repeat_inside_a_frame_that_is_otherwise_wrong_is_refused_for_that() -> None:
    frame: Any = '{"id": true, "message": {"a": 1, "a": 2}}'
    with pytest.raises(FrameError) as refused:
        parse(frame)
    assert '"id"' in refused.value.message
