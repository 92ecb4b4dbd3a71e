"""REST routing: google.api.http path templates and the route table that matches requests."""

from __future__ import annotations

from bridge.routing.table import Match, MatchKind, Route, RouteConflict, RouteTable
from bridge.routing.template import (
    Segment,
    SegmentKind,
    Template,
    TemplateError,
    Variable,
    parse_template,
)

__all__ = [
    "Match",
    "MatchKind",
    "Route",
    "RouteConflict",
    "RouteTable",
    "Segment",
    "SegmentKind",
    "Template",
    "TemplateError",
    "Variable",
    "parse_template",
]
