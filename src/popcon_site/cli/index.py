"""``popcon-site index``: build the module -> distribution index now."""

from __future__ import annotations

import argparse
import os
import time

from popcon_site import _attribution, _index
from popcon_site._installed import environment_site_dirs
from popcon_site.cli._output import EXIT_OK, CommandError, print_json

HELP = "build the module -> distribution index now"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--system",
        action="store_true",
        help="write it into the environment for all users (run after installing packages)",
    )
    parser.add_argument(
        "--remove",
        action="store_true",
        help="with --system: delete the environment's index files instead (before uninstalling)",
    )


def run(args: argparse.Namespace) -> int:
    from popcon_site._indexer import build

    if args.remove:
        return _remove(args)
    if args.system:
        target = _index.system_index_dirs()[0]
        # A fresh venv has no {prefix}/share; the index saver creates only the last two levels.
        share = os.path.dirname(os.path.dirname(target))
        try:
            os.makedirs(share, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise CommandError(
                f"cannot create {share}: {exc.strerror or exc} "
                "(run index --system as the owner of the environment)"
            ) from None
        site_dirs = environment_site_dirs()
    else:
        cache = _index.user_cache_dir()
        if cache is None:
            raise CommandError("no usable cache directory (set PYTHON_POPCONTEST_CACHE_DIR)")
        target = cache
        site_dirs = _attribution.site_dirs()
    results: list[dict[str, object]] = []
    for site_dir in site_dirs:
        started = time.perf_counter()
        built = build(site_dir)
        elapsed = time.perf_counter() - started
        if not _index.save(built, target, shared=args.system):
            how = (
                "run index --system as the owner of the environment"
                if args.system
                else "it must be a directory of yours, not writable by others"
            )
            raise CommandError(f"cannot write the index into {target} ({how})")
        results.append(
            {
                "site_dir": site_dir,
                "distributions": len(set(built.owners.values()) | set(built.roots.values())),
                "seconds": round(elapsed, 4),
                "file": os.path.join(target, _index.file_name(site_dir)),
                "scope": "system" if args.system else "user cache",
            }
        )
    if args.json:
        print_json(results)
        return EXIT_OK
    for result in results:
        print(
            f"{result['site_dir']}: {result['distributions']} distributions "
            f"indexed in {float(str(result['seconds'])) * 1000:.0f} ms"
        )
        print(f"  -> {result['file']}")
    if args.system:
        print(
            "System index: readable by all users, used by every process until the next "
            "install or uninstall makes it stale (then run this again)."
        )
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    if not args.system:
        raise CommandError("--remove goes with --system (a user's cache is ~/.cache/popcon-site)")
    removed: list[str] = []
    for directory in _index.system_index_dirs():
        try:
            removed += _index.remove_system_indexes(directory)
        except OSError as exc:
            raise CommandError(
                f"cannot remove the index in {directory}: {exc.strerror or exc} "
                "(run it as the owner of the environment)"
            ) from None
    if args.json:
        print_json({"removed": removed})
    elif removed:
        print("\n".join(f"removed {path}" for path in removed))
    else:
        print("no system index to remove")
    return EXIT_OK
