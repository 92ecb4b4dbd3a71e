"""Reading the config file: YAML, ``${NAME}`` references, validation, one-line errors.

Anything a user can get wrong in the file surfaces as one `ConfigError` whose text is a single
line, ``<file>: <dotted key>: <what is wrong>``. A pydantic ValidationError is told by its
first error, in the words the validators chose and with the key path as the file spells it
(``upstreams.users.targets[0]``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from bridge.config.settings import ConfigFile, Settings
from bridge.config.values import EnvText, Problem, describe

_ENV_REF: Final = re.compile(r"\$(\$?)\{([^}]*)(\}?)")
_ENV_INNER: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


_BOOL: Final = "tag:yaml.org,2002:bool"
_WORD_KEYS: Final = frozenset({"on", "off", "yes", "no"})


class ConfigError(Exception):
    """A mistake in the configuration, told in one line: ``<file>: <key>: <problem>``."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = " ".join(problem.split())
        super().__init__(f"{file}: {key}: {self.problem}" if key else f"{file}: {self.problem}")


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """The settings in a YAML file; `env` (default `os.environ`) resolves `${NAME}` references."""
    label = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(label, "", "config file not found") from None
    except IsADirectoryError:
        raise ConfigError(label, "", "is a folder, not a config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(label, "", f"not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise ConfigError(label, "", f"cannot read the config file ({e.strerror})") from None
    return _build(parse_yaml(label, text), Path(os.path.abspath(path)), label, env)


def settings_from_dict(
    data: Mapping[str, Any] | None, source: Path, env: Mapping[str, str] | None = None
) -> Settings:
    """The settings in already-parsed YAML data, as if read from the file `source`."""
    return _build(data, Path(os.path.abspath(source)), str(source), env)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error, and a key
    written ``on``, ``off``, ``yes`` or ``no`` is that word (YAML 1.1 reads ``on:`` as true:
    ``fallbacks[].on`` and ``retries.on`` are keys, and YAML 1.2 agrees)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` and then overriding a merged key is legitimate
            if key_node.tag == _BOOL and key_node.value.lower() in _WORD_KEYS:
                key_node.tag = "tag:yaml.org,2002:str"  # before it is built: built keys are kept
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float):
                continue  # unhashable or exotic keys are rejected later as unknown keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(label: str, text: str) -> Any:
    """YAML text as the config loader reads it (duplicate keys refused, `on:` kept a string);
    a ConfigError naming ``label`` and the line when it is not YAML."""
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        if e.context and e.problem:
            problem = f"{problem} ({e.context})"
        raise ConfigError(label, where, problem) from None
    except yaml.YAMLError as e:
        raise ConfigError(label, "", f"invalid YAML: {e}") from None


def _build(data: Any, source: Path, label: str, env: Mapping[str, str] | None) -> Settings:
    if data is not None and not isinstance(data, Mapping):
        problem = f"the top level must be a mapping of settings, got {describe(data)}"
        raise ConfigError(label, "", problem)
    expanded = _expand(label, os.environ if env is None else env, "", dict(data or {}))
    try:
        file = ConfigFile.model_validate(expanded, context={"folder": source.parent})
    except ValidationError as e:
        raise _first_error(label, e.errors(include_url=False)[0], expanded) from None
    return Settings.of(file, source)


def _expand(label: str, env: Mapping[str, str], key: str, value: Any) -> Any:
    """A copy of the YAML data with every `${NAME}` in a string value read from the environment;
    such strings become `EnvText`, which remembers the variables that gave nothing."""
    if isinstance(value, dict):
        return {k: _expand(label, env, _join(key, k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(label, env, f"{key}[{i}]", v) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    missing: list[str] = []

    def replace(m: re.Match[str]) -> str:
        escaped, inner, closed = m.groups()
        if escaped:
            return m.group(0)[1:]  # `$${X}` is the literal text `${X}`
        ref = _ENV_INNER.fullmatch(inner)
        if not closed or not ref:
            problem = f"{m.group(0)!r} is not an environment reference (use ${{NAME}})"
            raise ConfigError(label, key, problem)
        found = env.get(ref.group(1), "")
        if not found and ref.group(2) is None:
            state = "is set but empty" if ref.group(1) in env else "is not set"
            missing.append(f"environment variable {ref.group(1)} {state}")
        return found or ref.group(2) or ""

    return EnvText(_ENV_REF.sub(replace, value), ", ".join(missing))


def _join(key: str, part: object) -> str:
    return f"{key}.{part}" if key else str(part)


def _first_error(label: str, error: ErrorDetails, data: Any) -> ConfigError:
    """A pydantic error as a ConfigError: its key path as the file spells it, and its cause."""
    cause = (error.get("ctx") or {}).get("error")
    at = cause.at if isinstance(cause, Problem) else ()
    key, value = _locate(data, (*error["loc"], *at))
    problem = _problem(error)
    missing = getattr(value, "missing", "")
    if missing and missing not in problem:
        problem = f"{problem} ({missing})"  # the likely cause of a bad value
    return ConfigError(label, key, problem)


def _locate(data: Any, loc: tuple[int | str, ...]) -> tuple[str, Any]:
    """The dotted key of a pydantic location in the (expanded) YAML data, and the value there."""
    key, node = "", data
    for part in loc:
        if part == "[key]":
            continue  # pydantic's mark of an error in a mapping's key: the key is the path
        if isinstance(node, list) and isinstance(part, str):
            continue  # a bare list stood for this key of its section (`rate_limits: [...]`)
        if isinstance(part, int) and not isinstance(node, dict):
            key += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            key = _join(key, part)
            node = node.get(part) if isinstance(node, dict) else None
    return key, node


def _problem(error: ErrorDetails) -> str:
    """What is wrong, in the words the config's validators use; pydantic's own for the rest."""
    kind, value = error["type"], error.get("input")
    if kind == "value_error":
        return str((error.get("ctx") or {})["error"])
    if kind == "missing":
        return "required"
    if kind in ("model_type", "dict_type"):
        return f"expected a mapping, got {describe(value)}"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {describe(value)}"
    if kind == "literal_error":
        return f"expected {(error.get('ctx') or {})['expected']}, got {describe(value)}"
    return error["msg"]
