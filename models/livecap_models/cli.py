"""``python -m livecap_models build|list|verify``: manage the model cache by hand.

The server builds what it needs on first start; this is for building ahead
of time (e.g. in a container image), inspecting the cache and checking it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from livecap_models.build import PRECISIONS, default_cache_dir, ensure_model, list_models
from livecap_models.catalog import CATALOG, SourceMissing
from livecap_models.manifest import verify


def _progress_bar(label: str) -> Callable[[str, float], None]:
    """A one-line bar on stderr, redrawn in place (no dependency for so little)."""

    def update(stage: str, fraction: float) -> None:
        filled = round(fraction * 30)
        end = "\n" if fraction >= 1.0 else ""
        print(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {stage:<14}", end=end,
              file=sys.stderr, flush=True)

    return update


def _build(args: argparse.Namespace) -> int:
    for name in args.names or list(CATALOG):
        manifest = ensure_model(name, args.precision, args.cache_dir, _progress_bar(f"{name}-{args.precision}"),
                                force=args.force)
        print(f"{manifest.version}\t{manifest.directory}")
    return 0


def _list(args: argparse.Namespace) -> int:
    for manifest in list_models(args.cache_dir):
        size = sum(f.size for f in manifest.files) / 1e6
        sources = ", ".join(f"{name} {version}" for name, version in manifest.source.distributions.items())
        print(f"{manifest.version}\t{size:.0f} MB\t{sources}\t{manifest.directory}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    failed = False
    for manifest in list_models(args.cache_dir):
        problems = verify(manifest)
        failed = failed or bool(problems)
        print(f"{manifest.version}: {'ok' if not problems else 'FAILED'}")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="livecap_models", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", type=Path, default=None, help=f"default: {default_cache_dir()}")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", parents=[common], help="build models (all known ones by default)")
    build.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(CATALOG)}")
    build.add_argument("--precision", choices=PRECISIONS, default="int8")
    build.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    build.set_defaults(run=_build)
    commands.add_parser("list", parents=[common], help="list built models").set_defaults(run=_list)
    commands.add_parser("verify", parents=[common], help="check every built file against its manifest"
                        ).set_defaults(run=_verify)
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except SourceMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return status
