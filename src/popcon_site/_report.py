"""Exit half of popcon-site: attribute what this process imported, send the counters.

Called once from the atexit hook, with the names snapshotted before anything
here was imported, so the reporter's own imports (``_socket``, and
``importlib_metadata`` / ``statsd`` when it needs them) are never counted.
"""

from __future__ import annotations

import sys
import time

from popcon_site import _attribution, _resolve, _wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from popcon_site._bootstrap import Session

# Longest the report may wait on the network (resolver, TCP connect and send).
NETWORK_BUDGET = 0.2


def module_files(names: set[str]) -> set[str]:
    modules = sys.modules
    files = set()
    for name in names:
        module = modules.get(name)
        if module is not None:
            path = _attribution.module_file(module)
        elif name in modules:
            continue  # set to None on purpose: blocked, never loaded
        else:
            path = _attribution.locate_unloaded(name)  # imported, then deleted
        if path is not None:
            files.add(path)
    return files


def report(session: Session, names: set[str]) -> str:
    """Attribute and send; returns the one-line summary used in debug mode."""
    config = session.config
    if config is None:
        return f"not reporting: {session.error}"
    attributor = _attribution.Attributor.for_this_process()
    used = attributor.distributions(module_files(names))
    lines = _wire.counter_lines(config.prefix, config.reports_name, used)
    summary = ", ".join(sorted(used)) or "no distributions"

    started = time.monotonic()
    address = _resolve.literal_address(config.host, config.port)
    if address is None and session.resolution is not None:
        address = session.resolution.wait(NETWORK_BUDGET)
    if address is None:
        return f"not sent ({summary}): cannot resolve {config.host!r}"
    target = f"{_format_address(address)} over {config.protocol}"
    if config.protocol == "tcp":
        remaining = NETWORK_BUDGET - (time.monotonic() - started)
        try:
            _wire.send_tcp(address, lines, remaining)
        except Exception as exc:
            return f"not sent ({summary}) to {target}: {type(exc).__name__}: {exc}"
        return f"sent {summary} + reports to {target}"
    payloads = _wire.datagrams(lines)
    sent = _wire.send_udp(address, payloads)
    if sent != len(payloads):
        return f"sent {sent} of {len(payloads)} datagrams ({summary} + reports) to {target}"
    return f"sent {summary} + reports to {target} in {sent} datagram(s)"


def _format_address(address: _resolve.Address) -> str:
    sockaddr = address[1]
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
