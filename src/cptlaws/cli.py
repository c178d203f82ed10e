"""cptlaws: fit CPT / LR-annealing / CMR laws to loss curves, train PT and CPT runs, run study steps.

Each area registers its own sub-commands from its own module, so the CLI stays one entry point without
every area editing one file."""

from __future__ import annotations

import argparse
import importlib
import sys

# module -> provides `register(subparsers)`; each sub-command sets `func(args) -> int | None`.
_MODULES = (
    "cptlaws.cli_fit",  # fit, predict
    "cptlaws.cli_cmr",  # cmr
    "cptlaws.cli_data",  # corpus, tokenizer, tokenize
    "cptlaws.cli_train",  # train
    "cptlaws.cli_study",  # study-level steps called by the workflow (collect, fit-study, check)
    "cptlaws.cli_plot",  # figures and tables
)


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cptlaws", description=__doc__.splitlines()[0])
    from cptlaws import __version__

    parser.add_argument("--version", action="version", version=f"cptlaws {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # area not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except (CLIError, ValueError, FileNotFoundError, KeyError) as exc:
        # Library errors carry messages that name the file / run / key; show them without a traceback.
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"cptlaws {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
