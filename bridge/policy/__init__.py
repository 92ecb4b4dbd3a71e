"""Policies: the steps in front of the upstream, composed once per method per snapshot.

A method's chain is decided when a snapshot is built, from the config rules that match its
name, and stored on its bindings as ``invoke``. A method that no rule touches gets no policy
step at all: only the observing step (metrics, `bridge.observe.metrics`) in front of the
terminal, so it pays nothing for the policy machinery.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from bridge.call import Invoke, Step

if TYPE_CHECKING:
    from bridge.registry.snapshot import Method

# Builds one method's chain; given to the snapshot builder.
Chains = Callable[["Method"], Invoke]


def compose(steps: Sequence[Step], terminal: Invoke) -> Invoke:
    """``steps[0]`` first, then each next one, then ``terminal``; nothing added when empty."""
    invoke = terminal
    for step in reversed(steps):
        invoke = functools.partial(step, next=invoke)
    return invoke
