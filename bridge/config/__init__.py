"""The YAML configuration file -> frozen, validated settings (errors name the file and the key).

Anything a user can get wrong in the file surfaces as one `ConfigError` whose text is a single
line, ``<file>: <dotted key>: <what is wrong>``. `${NAME}` (or `${NAME:-default}`) anywhere in a
string value is read from the environment before validation; `$${` is a literal `${`.

The file is described by pydantic models (frozen, unknown keys refused): `ConfigFile` is its
root and the source of the JSON Schema that ``bridge schema`` prints; `Settings` is what the
rest of the code reads.
"""

from bridge.config.load import ConfigError, load_settings, settings_from_dict
from bridge.config.policies import (
    ApiKey,
    ApiKeySettings,
    AuthRule,
    AuthSettings,
    CorsSettings,
    JwtSettings,
    Network,
    RateLimitRule,
    RateLimitSettings,
)
from bridge.config.sections import (
    DEFAULT_STORE,
    DEFAULT_TIMEOUT,
    JsonOptions,
    Limits,
    UpstreamSettings,
)
from bridge.config.settings import (
    DEFAULT_FORWARD_HEADERS,
    DEFAULT_LISTEN,
    ConfigFile,
    Settings,
    config_schema,
)
from bridge.config.values import NOT_SUPPORTED, parse_duration, parse_size

__all__ = [
    "DEFAULT_FORWARD_HEADERS",
    "DEFAULT_LISTEN",
    "DEFAULT_STORE",
    "DEFAULT_TIMEOUT",
    "NOT_SUPPORTED",
    "ApiKey",
    "ApiKeySettings",
    "AuthRule",
    "AuthSettings",
    "ConfigError",
    "ConfigFile",
    "CorsSettings",
    "JsonOptions",
    "JwtSettings",
    "Limits",
    "Network",
    "RateLimitRule",
    "RateLimitSettings",
    "Settings",
    "UpstreamSettings",
    "config_schema",
    "load_settings",
    "parse_duration",
    "parse_size",
    "settings_from_dict",
]
