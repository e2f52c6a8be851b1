"""popcon-site benchmarks, side by side with bare Python and popularity-contest 0.4.1.

    nox -s bench                 # full run (~15 minutes on 2 cores, builds included)
    nox -s bench -- --quick      # fewer rounds, same coverage (~5 minutes once built)
    nox -s bench -- --rebuild    # rebuild every environment under benchmarks/work/

Prints the tables and writes benchmarks/results/latest.{txt,json} and
benchmarks/results/exit-cost-vs-distributions.png.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from popcon_bench import envs, output, probes, workloads
from popcon_bench.envs import BuiltEnv, EnvSpec
from popcon_bench.runner import UdpSink, Variant, run_interleaved
from popcon_bench.stats import FIELDS, Summary, hook_ms, paired, summarize

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "work"
RESULTS = BENCH / "results"
Json = dict[str, Any]

SPECS = [
    EnvSpec("small", "small.txt", 0, "requests, pyyaml, numpy + deps"),
    EnvSpec("real130", "real.txt", 0, "~130 real dists (numpy, pandas, scipy, boto3...)"),
    EnvSpec("synth100", "small.txt", 100, "small + 100 synthetic dists"),
    EnvSpec("synth500", "small.txt", 500, "small + 500 synthetic dists"),
    EnvSpec("synth2000", "small.txt", 2000, "small + 2,000 synthetic dists"),
]


EXIT_TARGET_BLOCKS = (("small", "stdlib"), ("real130", "rich"))
# Where user counters on / off / first of the month run side by side (issue 23).
USERS_BLOCKS = (("small", "pass"), ("small", "stdlib"), ("real130", "rich"))


@dataclass(frozen=True)
class Plan:
    """How many measured rounds each kind of variant gets (after one warm-up round)."""

    fast: dict[str, int]  # bare / off / on / hook, per workload
    earlier_small: int  # popularity-contest in the small environment
    earlier_big: int  # ... where its exit walks 100+ distributions (~1-3 s per run here)
    earlier_procs: int  # ... fork / spawn, where it walks them twice or three times
    cold: int
    probe_runs: int
    callgrind: tuple[str, ...]
    floor_rounds: int  # python -c pass with each kind of start-up hook, no popcon-site
    # The exit targets' blocks run this many times the rounds: their wall-clock exit
    # spreads over ~3 ms (small env, stdlib script; target 1 ms) and ~16 ms (130 real
    # dists, rich script; target 3 ms) between rounds.
    exit_target_factor: int = 1


FULL = Plan(
    fast={"pass": 41, "stdlib": 41, "rich": 21, "imports": 31, "fork": 7, "spawn": 7},
    earlier_small=11,
    earlier_big=5,
    earlier_procs=3,
    cold=5,
    probe_runs=11,
    callgrind=("pass", "stdlib"),
    floor_rounds=201,
    exit_target_factor=3,
)
QUICK = Plan(
    fast={"pass": 11, "stdlib": 11, "rich": 5, "imports": 7, "fork": 3, "spawn": 3},
    earlier_small=3,
    earlier_big=2,
    earlier_procs=2,
    cold=2,
    probe_runs=3,
    callgrind=("pass",),
    floor_rounds=41,
)
# Checks that every step runs; its numbers mean nothing.
SMOKE = Plan(
    fast={"pass": 1, "stdlib": 1, "rich": 1, "imports": 1, "fork": 1, "spawn": 1},
    earlier_small=1,
    earlier_big=1,
    earlier_procs=1,
    cold=1,
    probe_runs=1,
    callgrind=("pass",),
    floor_rounds=1,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child_environ(sink: UdpSink, spec: EnvSpec) -> dict[str, str]:
    """Every variant gets the same variables; only the flavor and ENABLE differ.

    No PYTHONDONTWRITEBYTECODE (every environment has compiled .pyc files),
    one OpenBLAS thread (numpy's thread pool start-up is noise, the same in all).
    """
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(WORK / "home"),
        "LANG": "C.UTF-8",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHON_POPCONTEST_STATSD_HOST": "127.0.0.1",
        "PYTHON_POPCONTEST_STATSD_PORT": str(sink.port),
        "PYTHON_POPCONTEST_CACHE_DIR": str(WORK / "cache" / "warm" / spec.name),
    }


def make_variants(
    names: list[str],
    built: dict[str, BuiltEnv],
    base: dict[str, str],
    probe_dir: Path,
    rounds: dict[str, int],
) -> list[Variant]:
    on = dict(base, PYTHON_POPCONTEST_ENABLE="1")
    recipes = {
        "bare": (built["bare"].python, base, False),
        "off": (built["popcon"].python, base, False),
        "on": (built["popcon"].python, on, False),
        "cold": (built["popcon"].python, on, True),
        "hook": (
            built["popcon"].python,
            dict(on, PYTHONPATH=str(probe_dir), POPCON_BENCH_HOOK="time"),
            False,
        ),
        "earlier": (built["earlier"].python, base, False),
        # Distinct users (issue 23), side by side: "on" has them (the default) with this
        # month's markers already written (one listdir at exit, no write); "nousers"
        # turns them off (as before); "newusers" finds no markers (the runner removes
        # them before each run): the first process of a user's month, which writes.
        "nousers": (built["popcon"].python, dict(on, PYTHON_POPCONTEST_USERS="0"), False),
        # The exit hook timed in-process ("hook"), with user counters off.
        "hooknousers": (
            built["popcon"].python,
            dict(
                on, PYTHONPATH=str(probe_dir), POPCON_BENCH_HOOK="time", PYTHON_POPCONTEST_USERS="0"
            ),
            False,
        ),
        "newusers": (built["popcon"].python, on, False),
    }
    return [Variant(n, recipes[n][0], recipes[n][1], rounds[n], cold=recipes[n][2]) for n in names]


def summarize_block(env_name: str, workload: str, variants: list[Variant]) -> Json:
    by_name = {v.name: v for v in variants}
    bare = by_name["bare"]
    block: Json = {"env": env_name, "workload": workload, "variants": {}}
    for v in variants:
        entry: Json = {
            "n": len(v.samples),
            "raw": {
                name: summarize([f(s) for _r, s in v.samples]).as_dict()
                for name, f in FIELDS.items()
            },
            "datagrams_per_run": summarize([s.datagrams for _r, s in v.samples]).as_dict(),
            "samples": [[r, *asdict(s).values()] for r, s in v.samples],
        }
        if v is not bare:
            entry["vs_bare"] = {
                "total_ratio": paired(v, bare, FIELDS["total_ms"], True).as_dict(),
                "start_ratio": paired(v, bare, FIELDS["start_ms"], True).as_dict(),
                "exit_ratio": paired(v, bare, FIELDS["exit_ms"], True).as_dict(),
                "rss_ratio": paired(v, bare, FIELDS["maxrss_mb"], True).as_dict(),
                "cpu_ratio": paired(v, bare, FIELDS["cpu_ms"], True).as_dict(),
                "cpu_added_ms": paired(v, bare, FIELDS["cpu_ms"], False).as_dict(),
                "start_added_ms": paired(v, bare, FIELDS["start_ms"], False).as_dict(),
                "exit_added_ms": paired(v, bare, FIELDS["exit_ms"], False).as_dict(),
                "body_added_ms": paired(v, bare, FIELDS["body_ms"], False).as_dict(),
                "total_added_ms": paired(v, bare, FIELDS["total_ms"], False).as_dict(),
                "rss_added_mb": paired(v, bare, FIELDS["maxrss_mb"], False).as_dict(),
            }
        hook = hook_ms(v)
        if hook.n:
            entry["hook_ms"] = hook.as_dict()
        block["variants"][v.name] = entry
    earlier = block["variants"].get("earlier")
    if earlier:
        for name, entry in block["variants"].items():
            if name in ("bare", "earlier"):
                continue
            entry["vs_earlier"] = {
                key: _over(entry["vs_bare"][field]["median"], earlier["vs_bare"][field]["median"])
                for key, field in (
                    ("start", "start_added_ms"),
                    ("exit", "exit_added_ms"),
                    ("rss", "rss_added_mb"),
                )
            }
    return block


def _over(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def machine_info() -> tuple[str, str]:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    kernel = platform.release()
    sandbox = ""
    try:
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5).stdout
        if "gVisor" in dmesg:
            sandbox = ", gVisor sandbox (slow syscalls)"
    except (OSError, subprocess.SubprocessError):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    full = f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB, Linux {kernel}{sandbox}"
    short = f"{os.cpu_count()}-core {cpu.split('@')[0].strip()}{sandbox.split('(')[0].rstrip(' ')}"
    return full, short


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (same coverage)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rebuild", action="store_true", help="rebuild all cached environments")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run order")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="re-derive targets and tables from results/latest.json without measuring",
    )
    args = parser.parse_args()
    if args.render_only:
        return render_only()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    began = time.monotonic()

    if args.rebuild:
        shutil.rmtree(WORK / "envs", ignore_errors=True)
        shutil.rmtree(WORK / "synthetic", ignore_errors=True)
    for sub in ("home", "cache"):
        shutil.rmtree(WORK / sub, ignore_errors=True)
        (WORK / sub).mkdir(parents=True)
    RESULTS.mkdir(exist_ok=True)
    os.chdir(WORK)  # `python -c` puts the cwd on sys.path: keep it an empty, boring place

    log("building the popcon-site wheel")
    wheel = envs.build_wheel(WORK)
    built: dict[str, dict[str, BuiltEnv]] = {}
    for spec in SPECS:
        built[spec.name] = {}
        for flavor in envs.FLAVORS:
            notes: list[str] = []
            t0 = time.monotonic()
            built[spec.name][flavor] = envs.build_env(spec, flavor, WORK, wheel, notes)
            if notes:
                log(f"{'; '.join(notes)} ({time.monotonic() - t0:.0f} s)")
    log(f"environments ready after {time.monotonic() - began:.0f} s")

    scripts = WORK / "scripts"
    probe_dir = workloads.write_scripts(scripts)
    subprocess.run(
        [envs.base_python(), "-m", "compileall", "-q", "-j", "0", str(scripts)],
        check=True,
        env=envs.installer_environ(),
    )

    sink = UdpSink()
    results: Json = {"blocks": [], "environments": {}, "reported": {}}
    for spec in SPECS:
        results["environments"][spec.name] = {
            "label": spec.label,
            "flavors": {f: built[spec.name][f].distributions for f in envs.FLAVORS},
        }

    # Warm every environment's index once and show that the counters really arrive.
    for spec in SPECS:
        base = child_environ(sink, spec)
        rich = _argv("rich", scripts)
        for flavor, extra in (("popcon", {"PYTHON_POPCONTEST_ENABLE": "1"}), ("earlier", {})):
            sink.drain()
            subprocess.run(
                ["sh", "-c", 'exec "$@" 3>/dev/null', "sh", built[spec.name][flavor].python, *rich],
                env=dict(base, **extra),
                check=True,
            )
            lines = sorted(
                line for packet in sink.drain(wait=1.0) for line in packet.decode().split("\n")
            )
            results["reported"][f"{spec.name}/{flavor}"] = lines
        if not list((WORK / "cache" / "warm" / spec.name).glob("*.idx")):
            raise SystemExit(f"{spec.name}: the enabled run left no index in its cache directory")
    log(
        "indexes warm; counters received: "
        + ", ".join(f"{k}: {len(v)}" for k, v in results["reported"].items())
    )

    blocks: list[tuple[str, str, list[str]]] = []
    for spec in SPECS:
        for workload in ("pass", "stdlib", "rich"):
            names = ["bare", "off", "on", "hook", "earlier"]
            if workload == "rich":
                names.append("cold")
            if (spec.name, workload) in USERS_BLOCKS:
                names += ["nousers", "newusers", "hooknousers"]
            blocks.append((spec.name, workload, names))
    blocks.append(("small", "imports", ["bare", "off", "on"]))
    blocks.append(("real130", "fork", ["bare", "off", "on", "earlier"]))
    blocks.append(("real130", "spawn", ["bare", "off", "on", "earlier"]))

    for env_name, workload, names in blocks:
        spec = next(s for s in SPECS if s.name == env_name)
        fast = plan.fast[workload]
        if (env_name, workload) in EXIT_TARGET_BLOCKS:
            fast *= plan.exit_target_factor
        if workload in ("fork", "spawn"):
            earlier_rounds = plan.earlier_procs
        elif env_name == "small":
            earlier_rounds = plan.earlier_small
        else:
            earlier_rounds = plan.earlier_big
        rounds = {
            "bare": fast,
            "off": fast,
            "on": fast,
            "hook": fast,
            "earlier": min(earlier_rounds, fast),
            "cold": min(plan.cold, fast),
            "nousers": fast,
            "newusers": fast,
            "hooknousers": fast,
        }
        variants = make_variants(
            names, built[env_name], child_environ(sink, spec), probe_dir, rounds
        )
        t0 = time.monotonic()
        run_interleaved(variants, _argv(workload, scripts), WORK, sink, rng)
        results["blocks"].append(summarize_block(env_name, workload, variants))
        log(f"{env_name:9} {workload:7} {fast:3} rounds in {time.monotonic() - t0:5.1f} s")

    results["probes"] = run_probes(plan, built, sink, probe_dir, scripts, results)
    results["users_syscalls"] = users_syscalls(built["small"]["popcon"].python, sink, scripts)
    results["floors"] = wall_floors(plan, sink, scripts, rng)
    results["growth"] = growth(results)
    pass_ms = _block(results, "small", "pass")["variants"]["bare"]["raw"]["total_ms"]["median"]
    results["scale"] = {"pass_ms": pass_ms, "factor": pass_ms / 10.0}
    results["targets"] = targets(results)
    full, short = machine_info()
    results["meta"] = {
        "machine": full,
        "machine_short": short,
        "python": f"CPython {platform.python_version()}",
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seed": seed,
        "plan": asdict(plan),
        "elapsed_s": time.monotonic() - began,
        "wheel": wheel.name,
        "commit": _git_head(),
    }
    sink.close()

    text = output.render(results)
    print(text)
    (RESULTS / "latest.txt").write_text(text)
    output.write_json(results, RESULTS / "latest.json")
    if output.write_chart(results, RESULTS / "exit-cost-vs-distributions.png"):
        log(f"wrote {RESULTS / 'exit-cost-vs-distributions.png'}")
    log(f"wrote {RESULTS / 'latest.txt'} and latest.json in {time.monotonic() - began:.0f} s")
    return 0


def _git_head() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(envs.ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def render_only() -> int:
    results = json.loads((RESULTS / "latest.json").read_text())
    results["targets"] = targets(results)
    text = output.render(results)
    print(text)
    (RESULTS / "latest.txt").write_text(text)
    output.write_json(results, RESULTS / "latest.json")
    output.write_chart(results, RESULTS / "exit-cost-vs-distributions.png")
    return 0


def _argv(workload: str, scripts: Path) -> list[str]:
    return [a.replace("{scripts}", str(scripts)) for a in workloads.WORKLOADS[workload].argv]


STRACE_WRAPPER = ["sh", "-c", 'exec "$@" 3>/dev/null', "sh", "strace", "-f", "-y", "-qq"]


def users_syscalls(python: str, sink: UdpSink, scripts: Path) -> Json:
    """The file-system calls user counters make (issue 23), seen by strace: off, with
    this month's markers present, and a month's first process."""
    if not shutil.which("strace"):
        return {}
    base = dict(child_environ(sink, SPECS[0]), PYTHON_POPCONTEST_ENABLE="1")
    users_dir = Path(base["PYTHON_POPCONTEST_CACHE_DIR"]) / "users"
    found: Json = {}
    for name, extra in (
        ("nousers", {"PYTHON_POPCONTEST_USERS": "0"}),
        ("on", {}),
        ("newusers", {}),
    ):
        if name == "newusers":
            shutil.rmtree(users_dir, ignore_errors=True)
        trace = WORK / f"strace-{name}.txt"
        subprocess.run(
            [*STRACE_WRAPPER, "-o", str(trace), python, *_argv("stdlib", scripts)],
            env=dict(base, **extra),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        calls = []
        for line in trace.read_text().splitlines():
            if f"{users_dir}" not in line:
                continue
            call = line.split(None, 1)[1] if line[:1].isdigit() else line
            syscall = call.split("(", 1)[0]
            what = call.rsplit("/", 1)[-1].split(">", 1)[0].split('"', 1)[0]
            flags = " O_CREAT|O_EXCL" if "O_CREAT" in call else ""
            calls.append(f"{syscall}{flags} {what}".strip())
        found[name] = calls
        sink.drain()
    return found


def run_probes(
    plan: Plan,
    built: dict[str, dict[str, BuiltEnv]],
    sink: UdpSink,
    probe_dir: Path,
    scripts: Path,
    results: Json,
) -> Json:
    small = built["small"]
    base = child_environ(sink, SPECS[0])
    on = dict(base, PYTHON_POPCONTEST_ENABLE="1")
    rows: dict[str, tuple[Json, str, str]] = {}
    log("probes: .pth line, activation, watcher")
    pth = probes.pth_line_ns(small["popcon"].python, base, plan.probe_runs)
    rows["pth_line_off_us"] = (_scale(pth, 1e-3), "us", ".pth line when off (exec of the line)")
    act = probes.activation_ns(small["popcon"].python, base, plan.probe_runs)
    rows["activation_us"] = (
        _scale(act, 1e-3),
        "us",
        "import popcon_site + activate(), fresh process",
    )
    finder, null_finder = probes.finder_ns(small["popcon"].python, on, plan.probe_runs)
    rows["watcher_per_import_ns"] = (
        finder.as_dict(),
        "ns",
        "one import lookup with the watcher first in sys.meta_path",
    )
    rows["noop_finder_per_import_ns"] = (
        null_finder.as_dict(),
        "ns",
        "floor: a finder whose find_spec only returns None",
    )
    first, idle, trigger = probes.checkpoint_ns(small["popcon"].python, on, plan.probe_runs)
    rows["checkpoint_first_us"] = (
        _scale(first, 1e-3),
        "us",
        "first checkpoint: loads its modules, reads the index, sends",
    )
    rows["checkpoint_nothing_new_us"] = (
        _scale(idle, 1e-3),
        "us",
        "a later checkpoint that finds nothing new",
    )
    rows["checkpoint_trigger_ns"] = (
        trigger.as_dict(),
        "ns",
        "the collection trigger when no checkpoint is due (one gc callback call)",
    )
    imports = _block(results, "small", "imports")
    per_import = paired_diff_per(imports, "on", "off", "body_ms", 1e6 / workloads.WATCH_MODULES)
    rows["watcher_wall_per_import_ns"] = (
        per_import,
        "ns",
        f"(body on - body off) / {workloads.WATCH_MODULES} imports, wall clock",
    )
    pass_bare = _block(results, "small", "pass")["variants"]["bare"]["raw"]["total_ms"]
    rows["pass_bare_total_ms"] = (pass_bare, "ms", "python -c pass, bare, whole process")

    floors = build_floor_envs(built)
    env_off = child_environ(sink, SPECS[0])
    for module, activate, key, what in (
        (
            "popcon_bench_empty",
            False,
            "import_empty_module_us",
            "floor: import an empty module from site-packages",
        ),
        ("popcon_site", False, "import_popcon_site_us", "import popcon_site (no activation)"),
        ("popcon_site", True, "import_and_activate_us", "import popcon_site + activate()"),
    ):
        found = probes.import_ns(floors["import"], module, env_off, plan.probe_runs * 2, activate)
        rows[key] = (_scale(found, 1e-3), "us", what)

    callgrind: dict[str, dict[str, int]] = {}
    if shutil.which("valgrind"):
        cg_env = dict(base, PYTHONHASHSEED="0", PYTHONPATH=str(probe_dir))
        cg_variants = {
            "bare": (small["bare"].python, cg_env),
            "off": (small["popcon"].python, cg_env),
            "on, exit hook removed": (
                small["popcon"].python,
                dict(cg_env, PYTHON_POPCONTEST_ENABLE="1", POPCON_BENCH_HOOK="none"),
            ),
            "on": (small["popcon"].python, dict(cg_env, PYTHON_POPCONTEST_ENABLE="1")),
        }
        for workload in plan.callgrind:
            log(f"callgrind: {workload}")
            callgrind[workload] = {}
            for name, (python, env) in cg_variants.items():
                count = probes.instructions(
                    python, _argv(workload, scripts), env, WORK / "callgrind"
                )
                if count is not None:
                    callgrind[workload][name] = count
        log("callgrind: .pth line alternatives")
        (venv_site,) = (Path(floors["pth"]).parent.parent / "lib").glob("python3*/site-packages")
        callgrind["pass, .pth line alone (venv: read twice)"] = pth_alternatives(
            floors["pth"], venv_site, cg_env, scripts
        )
        # CPython reads a venv's .pth files twice (cpython#75723); a conda env or a
        # system install reads them once, as the base interpreter reads its user site.
        home = WORK / "home-user-site"
        user_env = dict(cg_env, HOME=str(home))
        user_site = subprocess.run(
            [envs.base_python(), "-c", "import site; print(site.getusersitepackages())"],
            env=user_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        callgrind["pass, .pth line alone (read once)"] = pth_alternatives(
            envs.base_python(), Path(user_site), user_env, scripts
        )
        shutil.rmtree(WORK / "callgrind", ignore_errors=True)

    log("modules loaded")
    spec = next(s for s in SPECS if s.name == "real130")
    loaded = probes.modules_loaded(
        built["real130"]["popcon"].python, child_environ(sink, spec), WORK / "cache" / "modules"
    )
    sink.drain(wait=0.2)

    log("profiles of the exit hook")
    profile_dir = RESULTS / "profile"
    shutil.rmtree(profile_dir, ignore_errors=True)
    profile_dir.mkdir()
    breakdown = []
    for env_name, workload in (("small", "stdlib"), ("real130", "rich"), ("synth2000", "rich")):
        spec = next(s for s in SPECS if s.name == env_name)
        env = dict(child_environ(sink, spec), PYTHON_POPCONTEST_ENABLE="1")
        script = _argv(workload, scripts)[0]
        text = probes.exit_breakdown(built[env_name]["popcon"].python, script, env, plan.probe_runs)
        breakdown.append(f"== {env_name}, {workload} workload, index warm (median us)\n{text}\n")
    (profile_dir / "exit-breakdown.txt").write_text("\n".join(breakdown))
    for spec in SPECS:
        if spec.name not in ("real130", "synth2000"):
            continue
        env = dict(
            child_environ(sink, spec), PYTHON_POPCONTEST_ENABLE="1", PYTHONPATH=str(probe_dir)
        )
        python = built[spec.name]["popcon"].python
        probes.profile_exit(
            python, _argv("rich", scripts), env, profile_dir / f"{spec.name}-rich-warm.txt"
        )
        cold_dir = WORK / "cache" / "profile-cold"
        shutil.rmtree(cold_dir, ignore_errors=True)
        cold_env = dict(env, PYTHON_POPCONTEST_CACHE_DIR=str(cold_dir))
        probes.profile_exit(
            python, _argv("rich", scripts), cold_env, profile_dir / f"{spec.name}-rich-cold.txt"
        )
        sink.drain(wait=0.2)
    return {"rows": rows, "callgrind": callgrind, "modules_loaded": loaded}


# What any start-up hook costs before popcon-site does anything: each a venv with one .pth.
MINIMAL = "a minimal popcon-site (popcon_bench/minimal/), on"
ITSELF = "popcon-site itself, on"
FLOOR_HOOKS = {
    "no .pth": None,
    "a comment only": "# popcon-bench",
    "import sys": "import sys",
    "popcon_site.pth line, popcon-site absent": "shipped",
    "a .pth importing an empty module": "import popcon_bench_empty",
    # The least any report can cost at exit: import _socket, send one datagram, close.
    "a .pth whose exit hook sends one datagram": "import atexit; atexit.register(lambda: "
    "[s.sendto(b'popcon_bench.reports:1|c', ('127.0.0.1', {port})) or s.close() "
    "for s in [__import__('_socket').socket(2, 2)]])",
    # ... and the least for a design that loads its exit code from a module at exit.
    "a .pth whose exit hook imports an empty module, then sends": "import atexit; "
    "atexit.register(lambda: __import__('popcon_bench_empty') and "
    "[s.sendto(b'popcon_bench.reports:1|c', ('127.0.0.1', {port})) or s.close() "
    "for s in [__import__('_socket').socket(2, 2)]])",
    # The shipped check, enabled, importing popcon_bench/minimal/: what any design of
    # popcon-site's kind must do at start-up and at exit, and nothing more ...
    MINIMAL: "minimal",
    # ... side by side with popcon-site itself in the same kind of venv.
    ITSELF: "itself",
}


def wall_floors(plan: Plan, sink: UdpSink, scripts: Path, rng: random.Random) -> Json:
    """Whole-process wall clock of `python -c pass` per kind of hook, side by side.

    The floors under the off, start-up and exit targets: a .pth file that does
    nothing, the cheapest import line, the shipped line, a line importing an empty
    module (the least any hook that loads code at start-up can cost), exit hooks that
    send one datagram, and a minimal popcon-site next to popcon-site itself, both on.
    """
    shipped = (envs.ROOT / "popcon_site.pth").read_text().strip()
    on = dict(child_environ(sink, SPECS[0]), PYTHON_POPCONTEST_ENABLE="1")
    env = {k: v for k, v in on.items() if "POPCONTEST" not in k}
    variants = []
    for index, (name, line) in enumerate(FLOOR_HOOKS.items()):
        python, site = _tiny_venv(WORK / "envs" / f"floor-hook-{index}")
        variables = env
        if line == "itself":
            _install_wheel(python, deps=True)
            line = None
            variables = on
        if line == "minimal":
            # The shipped check, importing the minimal design instead of popcon_site.
            line = shipped.partition(" and exec(")[0] + " and __import__('popcon_bench_minimal')"
            assert line != shipped, "the shipped .pth line changed: update the minimal floor"
            for module in (BENCH / "popcon_bench" / "minimal").glob("*.py"):
                _add_module(python, site, module.name, module.read_text())
            variables = on
        if line is not None:
            text = shipped if line == "shipped" else line.replace("{port}", str(sink.port))
            (site / "zz_popcon_bench.pth").write_text(text + "\n")
            if "popcon_bench_empty" in line:
                _add_module(python, site, "popcon_bench_empty.py", "")
        variants.append(Variant(name, python, variables, plan.floor_rounds))
    log(f"wall-clock floors: {plan.floor_rounds} rounds")
    run_interleaved(variants, _argv("pass", scripts), WORK, sink, rng)
    reference = variants[0]
    out: Json = {}
    for variant in variants[1:]:
        out[variant.name] = {
            "total_ratio": paired(variant, reference, FIELDS["total_ms"], ratio=True).as_dict(),
            "start_added_ms": paired(variant, reference, FIELDS["start_ms"], ratio=False).as_dict(),
            "exit_added_ms": paired(variant, reference, FIELDS["exit_ms"], ratio=False).as_dict(),
        }
    return out


PTH_LINES = {
    "a comment only": "# popcon-bench",
    "import sys": "import sys",
    "shortest check": "import os;'PYTHON_POPCONTEST_ENABLE'in os.environ and "
    "__import__('popcon_site')._startup_hook()",
}


def build_floor_envs(built: dict[str, dict[str, BuiltEnv]]) -> dict[str, str]:
    """Two tiny venvs for floors: one with no packages (for .pth lines), one with the wheel
    and an empty module (for the cost of importing anything at start-up)."""
    out = {}
    sites = {}
    for name in ("pth", "import"):
        out[name], sites[name] = _tiny_venv(WORK / "envs" / f"floor-{name}")
    _install_wheel(out["import"], deps=False)
    _add_module(out["import"], sites["import"], "popcon_bench_empty.py", "")
    return out


def _install_wheel(python: str, deps: bool) -> None:
    """The popcon-site wheel this run built, compiled, into a tiny venv."""
    wheel = next((WORK / "wheel").glob("popcon_site-*.whl"))
    command = [envs.uv_binary(), "pip", "install", "--quiet", "--compile-bytecode"]
    command += [] if deps else ["--no-deps"]
    subprocess.run(
        [*command, "--python", python, str(wheel)], check=True, env=envs.installer_environ()
    )


def _tiny_venv(root: Path) -> tuple[str, Path]:
    """A fresh venv with nothing installed: its python and its site-packages."""
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(
        [envs.uv_binary(), "venv", "--quiet", "--python", envs.base_python(), str(root)],
        check=True,
        env=envs.installer_environ(),
    )
    (site,) = (root / "lib").glob("python3*/site-packages")
    return str(root / "bin" / "python"), site


def _add_module(python: str, site: Path, filename: str, text: str) -> None:
    """A module in site-packages, compiled (popcon_bench_empty: the cheapest there is)."""
    (site / filename).write_text(text)
    subprocess.run(
        [python, "-m", "compileall", "-q", str(site / filename)],
        check=True,
        env=envs.installer_environ(),
    )


def pth_alternatives(python: str, site: Path, env: dict[str, str], scripts: Path) -> dict[str, int]:
    """Instructions of `python -c pass` with one extra .pth file in `site` holding each
    kind of line."""
    site.mkdir(parents=True, exist_ok=True)
    pth = site / "zz_popcon_bench.pth"
    current = (envs.ROOT / "popcon_site.pth").read_text().strip()
    counts = {}
    for name, line in [
        ("no .pth", None),
        *PTH_LINES.items(),
        ("popcon_site.pth as shipped", current),
    ]:
        if line is None:
            pth.unlink(missing_ok=True)
        else:
            pth.write_text(line + "\n")
        found = probes.instructions(python, _argv("pass", scripts), env, WORK / "callgrind")
        if found is not None:
            counts[name] = found
    pth.unlink(missing_ok=True)
    return counts


def _scale(summary: Summary, factor: float) -> Json:
    return {
        "median": summary.median * factor,
        "p25": summary.p25 * factor,
        "p75": summary.p75 * factor,
        "n": summary.n,
    }


def _block(results: Json, env: str, workload: str) -> Json:
    return next(b for b in results["blocks"] if b["env"] == env and b["workload"] == workload)


def paired_diff_per(block: Json, name: str, ref: str, field: str, factor: float) -> Json:
    """Per-round difference of a raw field between two variants of a block, scaled."""
    column = {"start_ms": 1, "body_ms": 2, "exit_ms": 3, "total_ms": 4}[field]
    a = {row[0]: row[column] / 1e6 for row in block["variants"][name]["samples"]}
    b = {row[0]: row[column] / 1e6 for row in block["variants"][ref]["samples"]}
    diffs = [(a[r] - b[r]) * factor for r in a if r in b]
    return summarize(diffs).as_dict()


def growth(results: Json) -> Json:
    rows = []
    for spec in SPECS:
        block = _block(results, spec.name, "rich")
        v = block["variants"]
        on_exit = v["on"]["vs_bare"]["exit_added_ms"]
        earlier_exit = v["earlier"]["vs_bare"]["exit_added_ms"]
        rows.append(
            {
                "env": spec.name,
                "distributions": results["environments"][spec.name]["flavors"]["popcon"],
                "on": on_exit,
                "hook": v["hook"].get("hook_ms"),
                "cold": v["cold"]["vs_bare"]["exit_added_ms"],
                "earlier": earlier_exit,
                "on_over_earlier": _over(on_exit["median"], earlier_exit["median"]),
            }
        )
    rows.sort(
        key=lambda r: (not r["env"].startswith("synth") and r["env"] != "small", r["distributions"])
    )
    by_env = {r["env"]: r for r in rows}

    def ratio(key: str) -> float:
        high, low = by_env["synth2000"][key], by_env["synth100"][key]
        if not high or not low:
            return float("nan")
        return _over(high["median"], low["median"])

    return {
        "rows": rows,
        "on_ratio": ratio("on"),
        "hook_ratio": ratio("hook"),
        "earlier_ratio": ratio("earlier"),
    }


def targets(results: Json) -> list[Json]:
    def vs(env: str, workload: str, variant: str, field: str) -> Json:
        return _block(results, env, workload)["variants"][variant]["vs_bare"][field]

    def hook(env: str, workload: str) -> Json:
        return _block(results, env, workload)["variants"]["hook"].get("hook_ms") or {}

    out = []
    factor = results["scale"]["factor"]

    def add(
        name: str,
        goal: str,
        value: float,
        limit: float,
        measured: str,
        scaled: bool = False,
        floor: float | None = None,
    ) -> None:
        # floor: what the cheapest hook of that kind costs here, popcon-site absent.
        verdict = "met" if value <= limit else "MISSED"
        row = {
            "name": name,
            "target": goal,
            "measured": measured,
            "verdict": verdict,
            "value": value,
        }
        if scaled:
            row["scaled"] = f"<= +{limit * factor:.2f} ms"
            if verdict == "MISSED" and value <= limit * factor:
                row["verdict"] = "met when scaled"
            limit *= factor
        if row["verdict"] == "MISSED" and floor is not None and floor > limit:
            row["verdict"] = "MISSED, floor above goal"
        out.append(row)

    floors = results.get("floors", {})
    sys_floor = floors.get("import sys", {}).get("total_ratio")
    comment_floor = floors.get("a comment only", {}).get("total_ratio")
    off = vs("small", "pass", "off", "total_ratio")
    off_cpu = vs("small", "pass", "off", "cpu_ratio")
    callgrind = results["probes"].get("callgrind", {})
    cg = callgrind.get("pass", {})
    instr = f"; instructions {cg['off'] / cg['bare']:.4f}" if "off" in cg and "bare" in cg else ""
    # The line's own instructions, against a venv's `python -c pass` (the base
    # interpreter that reads its user site once starts up with more of its own).
    venv_pass = callgrind.get("pass, .pth line alone (venv: read twice)", {}).get("no .pth")
    for where in ("venv: read twice", "read once"):
        alone = callgrind.get(f"pass, .pth line alone ({where})", {})
        if venv_pass and "no .pth" in alone and "popcon_site.pth as shipped" in alone:
            added = alone["popcon_site.pth as shipped"] - alone["no .pth"]
            instr += f", the line alone {1 + added / venv_pass:.4f} ({where})"
    floor_text = (
        f"; floors: a comment-only .pth {comment_floor['median']:.3f}, `import sys` "
        f"{sys_floor['median']:.3f}"
        if sys_floor and comment_floor
        else ""
    )
    add(
        "off: python -c pass, total / bare",
        "<= 1.01",
        off["median"],
        1.01,
        f"{output.spread(off, 3)} (CPU {off_cpu['median']:.3f}{instr}{floor_text})",
        floor=sys_floor["median"] if sys_floor else None,
    )
    # The floor of a start-up or exit target: a minimal popcon-site, measured in tiny
    # venvs side by side with popcon-site itself (its figure there is shown too).
    minimal = floors.get(MINIMAL, {})
    itself = floors.get(ITSELF, {})

    def beside(field: str) -> str:
        if not (minimal.get(field) and itself.get(field)):
            return ""
        return (
            f"; a minimal popcon-site {minimal[field]['median']:+.2f} ms, "
            f"popcon-site itself beside it {itself[field]['median']:+.2f} ms"
        )

    start = vs("small", "pass", "on", "start_added_ms")
    cpu = vs("small", "pass", "on", "cpu_added_ms")
    empty = floors.get("a .pth importing an empty module", {}).get("start_added_ms")
    start_floor = minimal.get("start_added_ms") or empty
    add(
        "on: start-up added (python -c pass)",
        "<= +0.3 ms",
        start["median"],
        0.3,
        f"{output.spread(start, 2, True)} ms (whole-process CPU {cpu['median']:+.2f} ms"
        + (f"; floors: a .pth importing an empty module {empty['median']:+.2f} ms" if empty else "")
        + beside("start_added_ms")
        + ")",
        scaled=True,
        floor=start_floor["median"] if start_floor else None,
    )
    # Exit verdicts use the larger of the wall-clock median and the in-process hook time:
    # the hook's own duration is a floor of what exit adds, and far less noisy.
    ex = vs("small", "stdlib", "on", "exit_added_ms")
    h = hook("small", "stdlib")
    send = floors.get("a .pth whose exit hook sends one datagram", {}).get("exit_added_ms")
    exit_floor = minimal.get("exit_added_ms") or send
    add(
        "on: exit added, stdlib-only script",
        "<= +1 ms",
        max(ex["median"], h.get("median", 0)),
        1.0,
        f"{output.spread(ex, 2, True)} ms (hook in-process {output.spread(h, 2)} ms"
        + (f"; floors: one datagram sent at exit {send['median']:+.2f} ms" if send else "")
        + beside("exit_added_ms")
        + ")",
        scaled=True,
        floor=exit_floor["median"] if exit_floor else None,
    )
    ex = vs("real130", "rich", "on", "exit_added_ms")
    h = hook("real130", "rich")
    earlier = vs("real130", "rich", "earlier", "exit_added_ms")
    add(
        "on: exit added, requests/yaml/numpy, 130 real dists",
        "<= +3 ms",
        max(ex["median"], h.get("median", 0)),
        3.0,
        f"{output.spread(ex, 2, True)} ms (hook {output.spread(h, 2)} ms; "
        f"earlier {earlier['median']:+.0f} ms)",
        scaled=True,
    )
    g = results["growth"]
    # A few ms of wall clock at 100 distributions is inside the noise (it can even be
    # negative), so the ratio of wall-clock medians is meaningless; the in-process exit
    # hook times exactly the work that could grow with the number of distributions.
    add(
        "growth: exit at 2,000 dists / at 100",
        "<= 2x",
        g["hook_ratio"],
        2.0,
        f"{g['hook_ratio']:.2f}x in-process hook (wall clock {g['on_ratio']:.2f}x; "
        f"earlier {g['earlier_ratio']:.1f}x)",
    )
    rows = results["probes"]["rows"]
    wall = rows["watcher_wall_per_import_ns"][0]
    micro = rows["watcher_per_import_ns"][0]
    floor = rows["noop_finder_per_import_ns"][0]
    # The wall-clock figure cannot resolve 1 us per import here (its spread is tens of us):
    # the verdict uses the in-process lookup timing.
    add(
        "watcher: per newly imported module",
        "<= 1 us",
        micro["median"] / 1000,
        1.0,
        f"{micro['median'] / 1000:.2f} us in-process [{micro['p25'] / 1000:.2f}..{micro['p75'] / 1000:.2f}]"
        f" (floor, do-nothing finder: {floor['median'] / 1000:.2f} us; wall {wall['median'] / 1000:+.2f} us"
        f" [{wall['p25'] / 1000:+.2f}..{wall['p75'] / 1000:+.2f}])",
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
