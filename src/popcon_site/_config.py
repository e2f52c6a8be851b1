"""Reporting configuration, read from ``PYTHON_POPCONTEST_*`` variables.

Runs at start-up in every enabled process, so it imports nothing beyond what
the interpreter has already loaded.  Any invalid value disables reporting for
the process; the reason is kept for debug mode and ``popcon-site status``.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and collections.abc cost start-up time; annotations only
    from collections.abc import Mapping

ENV_ENABLE = "PYTHON_POPCONTEST_ENABLE"
ENV_DEBUG = "PYTHON_POPCONTEST_DEBUG"
ENV_HOST = "PYTHON_POPCONTEST_STATSD_HOST"
ENV_PORT = "PYTHON_POPCONTEST_STATSD_PORT"
ENV_PREFIX = "PYTHON_POPCONTEST_STATSD_PREFIX"
ENV_PROTOCOL = "PYTHON_POPCONTEST_STATSD_PROTOCOL"
ENV_CACHE_DIR = "PYTHON_POPCONTEST_CACHE_DIR"

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8125
DEFAULT_PREFIX = "python_popcon.library_used"
DEFAULT_PROTOCOL = "udp"

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")

_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_MAX_PREFIX = 200
_MAX_HOST = 253


class ConfigError(ValueError):
    """A ``PYTHON_POPCONTEST_*`` value that cannot be used; the message is one line."""


class Config:
    """Where and under which names this process reports."""

    __slots__ = ("debug", "host", "port", "prefix", "protocol", "reports_name")

    def __init__(
        self, host: str, port: int, prefix: str, protocol: str, debug: bool = False
    ) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.protocol = protocol
        self.debug = debug
        self.reports_name = reports_name_for(prefix)

    def __repr__(self) -> str:
        return (
            f"Config(host={self.host!r}, port={self.port}, prefix={self.prefix!r}, "
            f"protocol={self.protocol!r}, debug={self.debug})"
        )


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in TRUE_WORDS


def reports_name_for(prefix: str) -> str:
    """The per-process counter is a sibling of the prefix's last segment.

    ``python_popcon.library_used`` -> ``python_popcon.reports``;
    ``python_popcon.namespace.X.library_used`` -> ``python_popcon.namespace.X.reports``;
    a one-segment prefix such as ``popcon`` -> ``reports``.
    """
    parent, dot, _last = prefix.rpartition(".")
    return parent + dot + "reports"


def parse_port(raw: str) -> int:
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ConfigError(f"{ENV_PORT}={_shorten(raw)} is not a port number")
    port = int(text)
    if not 0 < port < 65536:
        raise ConfigError(f"{ENV_PORT}={_shorten(raw)} is outside 1-65535")
    return port


def parse_prefix(raw: str) -> str:
    prefix = raw.strip()
    segments = prefix.split(".")
    if (
        not prefix
        or len(prefix) > _MAX_PREFIX
        or any(not segment for segment in segments)
        or not set(prefix.replace(".", "")) <= _PREFIX_CHARS
    ):
        raise ConfigError(
            f"{ENV_PREFIX}={_shorten(raw)} must be dot-separated segments of "
            "letters, digits, '_' or '-'"
        )
    return prefix


def parse_host(raw: str) -> str:
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # "[::1]" as written in URLs
    if (
        not host
        or len(host) > _MAX_HOST
        or not host.isascii()
        or not host.isprintable()
        or any(c in host for c in " /\\#@")
    ):
        raise ConfigError(f"{ENV_HOST}={_shorten(raw)} is not a host name or IP address")
    return host


def parse_protocol(raw: str) -> str:
    protocol = raw.strip().lower()
    if protocol not in ("udp", "tcp"):
        raise ConfigError(f"{ENV_PROTOCOL}={_shorten(raw)} must be udp or tcp")
    return protocol


def parse_flag(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={_shorten(raw)} must be one of 1/true/yes/on or 0/false/no/off")


def from_environ(environ: Mapping[str, str] | None = None) -> Config:
    """Read the configuration; raises ConfigError (only) on an invalid value."""
    env = os.environ if environ is None else environ
    try:
        return Config(
            host=parse_host(env.get(ENV_HOST, DEFAULT_HOST)),
            port=parse_port(env.get(ENV_PORT, str(DEFAULT_PORT))),
            prefix=parse_prefix(env.get(ENV_PREFIX, DEFAULT_PREFIX)),
            protocol=parse_protocol(env.get(ENV_PROTOCOL, DEFAULT_PROTOCOL)),
            debug=parse_flag(ENV_DEBUG, env.get(ENV_DEBUG, "")),
        )
    except ConfigError:
        raise
    except Exception as exc:  # e.g. surrogates from undecodable bytes
        raise ConfigError(f"unusable PYTHON_POPCONTEST_* value ({type(exc).__name__})") from None


def debug_requested(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    try:
        return is_true(env.get(ENV_DEBUG))
    except Exception:
        return False


def _shorten(raw: str, limit: int = 40) -> str:
    """repr() of a value, cut so one bad variable still gives one short line."""
    text = raw if len(raw) <= limit else raw[:limit] + "..."
    return ascii(text)
