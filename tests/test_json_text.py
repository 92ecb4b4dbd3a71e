"""Unit tests of bridge.transcode.json_text, the one reader of client JSON (bodies, frames)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.transcode.json_text import JsonError, loads

ACCEPTED = [
    pytest.param(b'{"a": 1, "b": {"a": 2}}', {"a": 1, "b": {"a": 2}}, id="same-name-other-object"),
    pytest.param(b'[{"a": 1}, {"a": 2}]', [{"a": 1}, {"a": 2}], id="same-name-sibling-objects"),
    pytest.param(b'{"a": "x:y:z"}', {"a": "x:y:z"}, id="colons-in-a-value"),
    pytest.param(b'{"a": 1, "A": 2}', {"a": 1, "A": 2}, id="names-differ-in-case"),
    pytest.param(b'{"\\u0061": 1, "b": 2}', {"a": 1, "b": 2}, id="escaped-name"),
    pytest.param(b'\xef\xbb\xbf{"a": 1}', {"a": 1}, id="leading-bom"),
    pytest.param('{"a": 1, "b": 2}', {"a": 1, "b": 2}, id="str-input"),
    pytest.param(b'"\\ud83d\\ude00"', "\U0001f600", id="surrogate-pair"),
    pytest.param(b"[" * 900 + b"]" * 900, None, id="deep-but-within-limits"),
]


@pytest.mark.parametrize("text, expected", ACCEPTED)
def test_accepted(text: bytes | str, expected: Any) -> None:
    value = loads(text)
    if expected is not None:
        assert value == expected


REFUSED = [
    pytest.param(b'{"a": 1, "a": 2}', 'duplicate key "a"', False, id="duplicate"),
    pytest.param(b'{"x": {"b": 1, "c": 2, "b": 3}}', 'duplicate key "b"', False, id="nested"),
    pytest.param(b'[1, {"k": [], "k": []}]', 'duplicate key "k"', False, id="in-a-list"),
    pytest.param(b'{"a": 1, "\\u0061": 2}', 'duplicate key "a"', False, id="escaped-duplicate"),
    pytest.param('{"é": 1, "é": 2}', 'duplicate key "é"', False, id="str-non-ascii"),
    pytest.param(
        b'{"' + b"k" * 100 + b'": 1, "' + b"k" * 100 + b'": 2}',
        'duplicate key "' + "k" * 60 + '"',
        False,
        id="long-name-cut",
    ),
    pytest.param(b'{"a": NaN}', "", False, id="bare-nan"),
    pytest.param(b'{"a": Infinity}', "", False, id="bare-infinity"),
    pytest.param(b'{"a": 1e999}', "infinity", False, id="overflowing-number"),
    pytest.param(b'{"a": "\\ud800"}', "surrogate", False, id="lone-surrogate"),
    pytest.param(b'{"a": "\xff"}', "UTF-8", False, id="invalid-utf-8"),
    pytest.param(b"\xff\xfe{\x00}\x00", "", False, id="utf-16"),
    pytest.param(b'{"a": 1} x', "", False, id="trailing-data"),
    pytest.param(b"[" * 1100 + b"]" * 1100, "", True, id="too-deep-for-orjson"),
    pytest.param(b'{"a":' * 1010 + b"1" + b"}" * 1010, "", True, id="too-deep-for-the-scanner"),
]


@pytest.mark.parametrize("text, message, too_deep", REFUSED)
def test_refused(text: bytes | str, message: str, too_deep: bool) -> None:
    with pytest.raises(JsonError) as raised:
        loads(text)
    assert message in str(raised.value)
    assert raised.value.too_deep is too_deep
