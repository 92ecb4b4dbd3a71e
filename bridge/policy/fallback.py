"""The fallback step (SPEC 7): a configured answer in place of a backend failure.

`Fallbacks` is built once from the config's ``fallbacks`` rules; when a snapshot is built,
`Fallbacks.step` gives each unary method the step of the first rule whose glob matches it, or
None, and a method without one pays nothing. The rule's ``response`` JSON is parsed into the
method's response message there, once: a response that does not fit the message is a
`FallbackError` naming the rule and the method, which refuses the snapshot (a start-up failure,
or a refused registration). Streams get no fallback (a glob passes over them; a rule naming one
exactly is refused, `StreamingRule`).

When the rest of the chain fails with a code the rule lists, the call is answered with a fresh
copy of the message, marked ``X-Bridge-Fallback: true`` (in ``call.response_headers``, so REST
sends it as a header and a WebSocket in the call's headers frame); other failures pass through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from google.protobuf import json_format
from google.protobuf.message import Message

from bridge.call import Call, Invoke, Reply
from bridge.errors import CODE_BY_NAME, BridgeError
from bridge.policy.cache import FALLBACK, unary_rule
from bridge.upstream.call import UnaryReply

if TYPE_CHECKING:
    from bridge.registry.snapshot import Method

_TRUE: Final = "true"


class Rule(Protocol):
    """A ``fallbacks`` entry, as the config gives it."""

    @property
    def match(self) -> str: ...  # a glob over "pkg.Service/Method"
    @property
    def on(self) -> Sequence[str]: ...  # gRPC status code names, like "UNAVAILABLE"
    @property
    def response(self) -> Mapping[str, Any]: ...  # the response message as JSON


class FallbackError(ValueError):
    """A fallback rule that cannot answer for a method it matches."""


class Fallbacks:
    """The configured rules; each method's step is built (its response parsed) once."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    def step(self, method: Method) -> FallbackStep | None:
        """The step of the first rule matching a unary ``method``; None when none does.

        FallbackError when the rule's response does not fit the method's response message;
        StreamingRule when the rule names a streaming method exactly.
        """
        found = unary_rule(self.rules, method, "fallbacks", "given a fallback")
        if found is None:
            return None
        index, rule = found
        where = f"fallbacks[{index}] ({rule.match})"
        output = method.output
        try:
            message = json_format.ParseDict(
                dict(rule.response), output(), descriptor_pool=output.DESCRIPTOR.file.pool
            )
        except (json_format.ParseError, TypeError, ValueError) as e:
            raise FallbackError(
                f"{where}: response does not fit {output.DESCRIPTOR.full_name}, the response "
                f"of {method.full_name}: {e}"
            ) from None
        return FallbackStep(frozenset(CODE_BY_NAME[name] for name in rule.on), message)


class FallbackStep:
    """One rule's step for one method: the configured answer for the listed failures."""

    __slots__ = ("_body", "_codes", "_output")

    def __init__(self, codes: frozenset[int], message: Message) -> None:
        self._codes = codes
        self._output = type(message)
        self._body = message.SerializeToString()

    async def __call__(self, call: Call, next: Invoke) -> Reply:
        try:
            return await next(call)
        except BridgeError as error:
            if error.code not in self._codes:
                raise
        call.response_headers[FALLBACK] = _TRUE
        return UnaryReply(self._output.FromString(self._body), [], [])
