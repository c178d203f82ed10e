"""cptlaws: fit CPT / LR-annealing / CMR laws to loss curves, train PT and CPT runs, run study steps.

Each command group lives in its own module (``cptlaws.cli.<group>``) with a ``register(subparsers)`` and
handlers named ``cmd_<command>``. Modules import only argparse-level code at the top, so ``cptlaws X --help``
and the parser itself import no pandas, scipy or torch; a handler imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cptlaws.errors import CptlawsError

GROUPS = ("fit", "cmr", "plan", "data", "train", "export", "study", "plot")


def build_parser() -> argparse.ArgumentParser:
    from cptlaws import __version__

    parser = argparse.ArgumentParser(prog="cptlaws", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cptlaws {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"cptlaws.cli.{group}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except CptlawsError as exc:  # a message naming the file / run / key; anything else is a bug: traceback
        print(f"cptlaws {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)
