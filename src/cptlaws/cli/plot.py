"""`cptlaws plot`: paper figures and tables from the study outputs (docs/figures.md)."""

from __future__ import annotations

import argparse
import logging
import sys

from cptlaws.errors import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot",
        help="render the paper figures (PDF + 300-dpi PNG) and tables (LaTeX + markdown)",
        description="Render figures from results/tables, results/fits and results/checks. A figure whose "
        "optional inputs are missing is skipped with a note (listed in OUT/manifest.json).",
    )
    p.add_argument(
        "what",
        nargs="*",
        default=["all"],
        metavar="WHAT",
        help="'all' (default), figure names (fig1_schedules ... fig8_summary), tab_params, "
        "tab_heldout, or 'fixture' to write a synthetic study to --out instead",
    )
    p.add_argument("--tables", default="results/tables", help="dir with runs/curves/lrs.parquet")
    p.add_argument("--fits", default="results/fits", help="dir with fit JSON, predictions and CMR JSON")
    p.add_argument("--checks", default="results/checks", help="dir with heldout.parquet")
    p.add_argument("--out", default="results/figures", help="output dir")
    p.add_argument("--strict", action="store_true", help="fail (exit 2) if any requested figure is skipped")
    p.add_argument("--seed", type=int, default=0, help="fixture: noise seed")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    # INFO for our notes only: fontTools logs every subsetting step at INFO while writing PDFs.
    logging.basicConfig(level=logging.WARNING, format="cptlaws plot: %(message)s", stream=sys.stderr)
    logging.getLogger("cptlaws").setLevel(logging.INFO)
    from cptlaws.plots import FIGURE_NAMES, TABLE_NAMES, load_outputs, render_all

    what = list(args.what)
    if what == ["fixture"]:
        from cptlaws.plots.fixtures import make_fixture_study

        paths = make_fixture_study(args.out, seed=args.seed)
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    known = set(FIGURE_NAMES) | set(TABLE_NAMES) | {"all"}
    bad = [w for w in what if w not in known]
    if bad:
        raise UsageError(f"unknown figure {bad[0]!r} (known: all, {', '.join(FIGURE_NAMES + TABLE_NAMES)}, fixture)")
    study = load_outputs(args.tables, args.fits, args.checks)
    manifest = render_all(study, args.out, only=None if "all" in what else set(what))
    for name, paths in manifest["written"].items():
        print(f"{name}: {', '.join(paths)}")
    if args.strict and manifest["skipped"]:
        name, why = next(iter(manifest["skipped"].items()))
        raise UsageError(f"{name} skipped: {why} (--strict)")
    return 0
