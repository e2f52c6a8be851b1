"""``popcon-site status``: the start-up hook, configuration and index of this environment."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Mapping

import popcon_site
from popcon_site import (
    ENV_DEBUG,
    ENV_ENABLE,
    FALSE_WORDS,
    __version__,
    _attribution,
    _hooks,
    _index,
    _installed,
    _record,
    _resolve,
    _sweep,
    _users,
    enable_problem,
    is_literal_host,
    is_true,
)
from popcon_site._report import (
    Config,
    ConfigError,
    config_from_environ,
    literal_address,
    parse_flag,
)
from popcon_site.cli._output import EXIT_OK, age, print_json, table

HELP = "start-up hook, configuration and index of this environment"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


IPYTHON_STARTUP = os.path.join("etc", "ipython", "startup", "00-popcon-site.py")
SERVER_CONFIG = os.path.join("etc", "jupyter", "jupyter_server_config.d", "popcon-site.json")


def run(args: argparse.Namespace) -> int:
    site_dirs = _attribution.site_dirs()
    user_site = _installed.user_site()
    hook = _hooks.state(site_dirs)
    hooks = hook["files"]
    # pip puts data files under its install prefix: /usr/local for Debian's system Python.
    for prefix in dict.fromkeys(p for p in (_index.install_prefix(), sys.prefix) if p):
        ipython = os.path.join(prefix, IPYTHON_STARTUP)
        if os.path.isfile(ipython):
            hooks.append({"file": ipython, "role": "IPython start-up file, for Jupyter kernels"})
        server = os.path.join(prefix, SERVER_CONFIG)
        if os.path.isfile(server):
            hooks.append({"file": server, "role": "Jupyter server config: servers never report"})
    hook_file, hook_installed = hook["used_by_this_python"], hook["installed"]

    raw_enable = os.environ.get(ENV_ENABLE)
    enabled = is_true(raw_enable)
    active = popcon_site.current() is not None
    try:
        config: Config | None = config_from_environ()
        config_error = None
    except ConfigError as exc:
        config, config_error = None, str(exc)
    resolution = None if config is None else _resolution(config.host)

    cache_dir = _index.user_cache_dir()
    now = time.time()
    indexes = [_index_state(d, cache_dir, now, d == user_site) for d in site_dirs]
    records = _sweep.survey()

    data = {
        "python": {
            "executable": sys.executable,
            "version": sys.version.split()[0],
            "prefix": sys.prefix,
        },
        "popcon_site": {"version": __version__, "module": os.path.dirname(popcon_site.__file__)},
        "hook": hook,
        "enabled_in_this_shell": enabled,
        "enable_variable": raw_enable,
        "hook_ran_in_this_process": active,
        "config": None
        if config is None
        else {
            "host": config.host,
            "port": config.port,
            "protocol": config.protocol,
            "prefix": config.prefix,
            "reports_metric": config.reports_name,
            "include": list(config.include),
            "exclude": list(config.exclude),
            "rank0_only": config.rank0_only,
            "debug": config.debug,
        },
        "config_error": config_error,
        "enable_problem": None
        if enabled or (raw_enable or "").strip().lower() in FALSE_WORDS
        else enable_problem(raw_enable or ""),
        "debug_problem": debug_problem(os.environ),
        "host_resolves": None if resolution is None else resolution[0],
        "host_resolution": None if resolution is None else resolution[1],
        "cached_resolution": None if config is None else cached_resolution(config.host, cache_dir),
        "user_cache_dir": cache_dir,
        "user_counters": None if config is None else _users.status(config.prefix)[1],
        "system_index_dirs": _index.system_index_dirs(),
        "indexes": indexes,
        "records": [{"path": path, "state": state} for path, state in records],
    }
    if args.json:
        print_json(data)
        return EXIT_OK

    rows: list[list[str]] = []

    def row(key: str, value: str) -> None:
        rows.append([key, value])

    row("python", f"{sys.executable} {sys.version.split()[0]}, prefix {sys.prefix}")
    row("popcon-site", f"{__version__} in {os.path.dirname(popcon_site.__file__)}")
    if hook_installed:
        row("hook", f"installed ({hook_file} is the one this Python runs)")
    else:
        row("hook", f"NOT INSTALLED: no {hook_file} in any site directory of this Python")
    for entry in hooks:
        row("", f"{entry['file']}  [{entry['role']}]")
    row("", f"why: {hook['why']}")
    if enabled:
        state = "yes" + (
            ", and the hook ran in this process"
            if active
            else ", but the hook did NOT run in this process"
        )
    elif raw_enable is None:
        state = f"no ({ENV_ENABLE} is not set)"
    elif raw_enable.strip().lower() in FALSE_WORDS:
        state = f"no ({ENV_ENABLE}={raw_enable!r})"
    else:
        state = f"NO: {enable_problem(raw_enable)}"
    row("enabled", state)
    problem = debug_problem(os.environ)
    if problem:
        row("debug", problem)
    if config is None:
        row("config", f"INVALID, nothing is sent: {config_error}")
    else:
        assert resolution is not None
        row("statsd", f"{config.host}:{config.port} over {config.protocol}")
        row("host", resolution[1])
        cached = data["cached_resolution"]
        if cached is not None:
            row("", f"cached: {cached}")
        row("metrics", f"{config.prefix}.<distribution>:1|c, {config.reports_name}:1|c")
        filters = []
        if config.include:
            filters.append("only " + ",".join(config.include))
        if config.exclude:
            filters.append("never " + ",".join(config.exclude))
        if config.rank0_only:
            filters.append("only rank 0 of MPI/Slurm jobs")
        row("filters", "; ".join(filters) if filters else "none (every distribution is counted)")
        row("users", str(data["user_counters"]))
    row("user cache", cache_dir or "none usable (indexes are built in memory)")
    for entry in indexes:
        row("index", f"{entry['site_dir']}{' (user site)' if entry['user_site'] else ''}")
        row("", str(entry["summary"]))
    where = [d for d in _record.directories() if _record.usable(d, create=False)]
    row("records", "" if where else "none yet (created at a first non-stdlib import)")
    for directory in where:
        states = [state for path, state in records if os.path.dirname(path) == directory]
        live, dead = states.count("live"), states.count("dead")
        row("", f"{directory}: {live} live, {dead} dead (sent by the next sweep)")
        rows.extend(["", state] for state in states if state.startswith("refused"))
    print(table(rows, indent=""))
    return EXIT_OK


def debug_problem(environ: Mapping[str, str]) -> str | None:
    """Why PYTHON_POPCONTEST_DEBUG is off although set to something."""
    try:
        parse_flag(ENV_DEBUG, environ.get(ENV_DEBUG, ""))
    except ConfigError as exc:
        return f"{exc}: debug output is off (reporting is not affected)"
    return None


def _resolution(host: str) -> tuple[bool, str]:
    """Whether the statsd host resolves, looked up here and now (max 2 s)."""
    if host == "localhost":
        return True, "localhost = 127.0.0.1 (no lookup, as the statsd client does)"
    if literal_address(host, 0) is not None:
        return True, "an IP address (no lookup)"
    if is_literal_host(host):
        return False, f"{host!r} is neither an IP address nor a host name: processes send nothing"
    # A thread is fine here: this is popcon-site's own process, not a host program's.
    answers: list[object] = []
    lookup = threading.Thread(target=lambda: answers.append(_resolve.lookup(host)), daemon=True)
    lookup.start()
    lookup.join(2.0)
    found = answers[0] if answers else None
    if not isinstance(found, tuple):
        return False, (
            f"{host!r} does NOT resolve (or not within 2 s): processes send nothing; "
            "an IP address avoids the lookup"
        )
    return True, f"resolves to {found[1][0]} (an IP address saves processes the lookup)"


def cached_resolution(host: str, cache_dir: str | None) -> str | None:
    """What reporting processes use for a host name: the cached answer and its age."""
    if is_literal_host(host):
        return None
    if cache_dir is None:
        return "no usable cache: the first exit of each process looks the name up"
    entry, why = _resolve.read_entry(cache_dir, host)
    if entry is None:
        if why == "none yet":
            return "none yet: the next process to report looks the name up"
        return f"{why}: ignored, the next process to report looks the name up again"
    answer = "does not resolve" if entry.address is None else str(entry.address[1][0])
    now = time.time()
    state = "fresh" if entry.fresh(now) else "stale: the next process looks it up again"
    return f"{answer}, resolved {age(now - entry.resolved_at)} ({state})"


def _index_state(
    site_dir: str, cache_dir: str | None, now: float, user_site: bool
) -> dict[str, object]:
    """Which index a process would use for this site directory, and any stale ones."""
    stamp = _index.stamp_of(site_dir)
    places = [(d, "system") for d in _index.system_index_dirs()]
    if cache_dir is not None:
        places.append((cache_dir, "user cache"))
    used: dict[str, object] | None = None
    stale = []
    for directory, scope in places:
        path = os.path.join(directory, _index.file_name(site_dir))
        try:
            built_at = os.stat(path).st_mtime
        except OSError:
            continue
        if stamp is None:
            found, reason = None, "the site directory cannot be read"
        else:
            found, reason = _index.read(directory, site_dir, stamp, shared=scope == "system")
        if found is None:
            stale.append({"file": path, "scope": scope, "built_at": built_at, "reason": reason})
        elif used is None:
            used = {
                "file": path,
                "scope": scope,
                "built_at": built_at,
                "age_seconds": round(now - built_at, 1),
                "distributions": len(set(found.owners.values()) | set(found.roots.values())),
            }
    if used is not None:
        summary = (
            f"fresh {used['scope']} index, {used['distributions']} distributions, "
            f"built {age(float(str(used['age_seconds'])))}: {used['file']}"
        )
    else:
        # Checkpoints inside the program's work never build one: what they send needs it.
        fix = "popcon-site index" if user_site else "popcon-site index --system as its owner"
        summary = (
            "NO USABLE INDEX: a process killed before it exits sends only reports (checkpoints "
            "inside a program's work never build one; the next process to exit normally "
            f"does): run {fix} after "
            "every install"
        )
    for old in stale:
        summary += f"; ignored {old['scope']} index ({old['reason']}): {old['file']}"
    return {
        "site_dir": site_dir,
        "user_site": user_site,
        "fresh": used,
        "stale": stale,
        "summary": summary,
    }
