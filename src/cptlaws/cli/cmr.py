"""`cptlaws cmr`: the critical mixture ratio (Gu et al. 2407.17467) from loss curves or from given
CMR-law parameters. See docs/cmr.md."""

from __future__ import annotations

import argparse
import json
import math
import sys

from cptlaws.errors import UsageError

EPILOG = """examples:
  cptlaws cmr results/tables/curves.parquet --ratios results/tables/runs.parquet \\
      --domain-split code --general-split general --eps 0.05 --lam 1000 --out cmr.json
  cptlaws cmr --params 0.22524761,0.26944345,-0.48139982 --T 100        # paper, 460M: 29.8 %
  cptlaws cmr --params=-2.5368197,-0.42071423,0.84375368 --tokens 2e10  # 3.1B: 47.8 %, T = tokens / 2e8
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cmr",
        help="critical mixture ratio from curves, or evaluate a CMR scaling law",
        description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("curves", nargs="?", help="long curves table (.parquet or .csv): run_id, ratio, tokens, split, loss")
    g = p.add_argument_group("from curves")
    g.add_argument("--domain-split", help="split name of the domain validation loss")
    g.add_argument("--general-split", default="general", help="split name of the general validation loss")
    g.add_argument("--ratios", help="table with run_id, ratio (e.g. runs.parquet) when the curves lack a ratio column")
    g.add_argument("--x", default="tokens", help="token (or step) column; T = (x - x at branch) / t-unit")
    g.add_argument(
        "--t-unit",
        type=float,
        default=None,
        help="x per T unit (curves: default 1; --params: tokens per unit, default 2e8 as the paper)",
    )
    g.add_argument(
        "--t-origin",
        choices=("branch", "zero"),
        default="branch",
        help="branch: T counts from each run's first row (branch point); zero: x is already CPT tokens",
    )
    g.add_argument("--t-max", type=float, default=None, help="token budget T_max in T units (default: shortest run)")
    g.add_argument("--eps", type=float, default=0.05, help="tolerance on the general-loss increase (nats)")
    g.add_argument("--lam", type=_float_or_inf, default=1000.0, help="Lagrange weight of the general loss ('inf' ok)")
    g.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="SPLIT=LOSS",
        help="pre-CPT loss of a split (repeat for both); default: each run's branch-point row",
    )
    g.add_argument(
        "--interp", choices=("curves", "params"), default="curves", help="how per-ratio fits are interpolated in R"
    )
    g.add_argument(
        "--tolerance-from",
        choices=("increments", "loss_vs_ratio"),
        default="increments",
        help="feasibility on dL_gen(R,T_max) interpolated (default) or on the L(R) fit (the paper)",
    )
    g.add_argument(
        "--loss",
        choices=("linear", "huber", "soft_l1", "cauchy"),
        default="linear",
        help="fit loss (robust ones use --f-scale)",
    )
    g.add_argument("--f-scale", type=float, default=1.0, help="residual scale of a robust --loss (nats)")
    g.add_argument("--n-prefix", type=int, default=8, help="token budgets for CMR vs tokens and the CMR law (0: off)")
    g.add_argument(
        "--table-out", help="write per-point increments and fits here (.parquet or .csv) instead of into the JSON"
    )
    h = p.add_argument_group("from CMR-law parameters")
    h.add_argument(
        "--params",
        nargs="+",
        metavar="A4,S4,B3",
        help="a4,s4,b3 of R_CMR(T) = a4*T^s4 + b3 (with negative values: --params=a4,s4,b3 or three separate numbers)",
    )
    h.add_argument("--T", type=float, nargs="+", help="budget(s) in T units")
    h.add_argument("--tokens", type=float, nargs="+", help="budget(s) in tokens (converted with --t-unit)")
    p.add_argument("--out", help="write the JSON result here (default: stdout)")
    p.set_defaults(func=cmd_cmr)


def _float_or_inf(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 or 'inf', got {text!r}")
    return v


def _emit(obj: dict, out: str | None) -> None:
    from cptlaws.io import write_json

    if out:
        write_json(out, obj)
    else:
        json.dump(obj, sys.stdout, indent=2)
        sys.stdout.write("\n")


def cmd_cmr(args) -> int:
    if args.params is not None:
        return _run_params(args)
    if args.curves is None:
        raise UsageError("give a curves table (CURVES.parquet|csv) or --params a4,s4,b3")
    return _run_curves(args)


def _run_params(args) -> int:
    from cptlaws.cli.fit import check_out
    from cptlaws.cmr import PAPER_T_UNIT_TOKENS, cmr_scaling_law

    check_out(args.out)

    if args.curves is not None:
        raise UsageError("give either a curves table or --params, not both")
    text = ",".join(args.params)
    parts = [s for s in text.replace(" ", "").split(",") if s]
    try:
        vals = [float(s) for s in parts]
    except ValueError:
        raise UsageError(f"--params: expected three numbers a4,s4,b3, got {text!r}") from None
    if len(vals) != 3:
        raise UsageError(f"--params: expected three numbers a4,s4,b3, got {len(vals)}: {text!r}")
    if (args.T is None) == (args.tokens is None):
        raise UsageError("--params needs exactly one of --T (law units) or --tokens")
    unit = args.t_unit if args.t_unit is not None else PAPER_T_UNIT_TOKENS
    if args.T is not None:
        Ts = list(args.T)
        R = cmr_scaling_law(vals, Ts)
    else:
        Ts = [t / unit for t in args.tokens]
        R = cmr_scaling_law(vals, tokens=args.tokens, t_unit_tokens=unit)
    out = {
        "law": "R_CMR(T) = a4*T^s4 + b3",
        "params": dict(zip(("a4", "s4", "b3"), vals)),
        "t_unit_tokens": unit,
        "points": [{"T": float(t), "tokens": float(t) * unit, "cmr": float(r)} for t, r in zip(Ts, list(R))],
    }
    _emit(out, args.out)
    if args.out:
        for pt in out["points"]:
            print(f"T = {pt['T']:g}: CMR = {100 * pt['cmr']:.1f} %")
    return 0


def _run_curves(args) -> int:
    import pandas as pd

    from cptlaws.cli.fit import check_out
    from cptlaws.cmr import cmr_from_curves
    from cptlaws.io import read_table, write_parquet, write_text

    check_out(args.out)
    check_out(args.table_out, "--table-out")

    if not args.domain_split:
        raise UsageError("--domain-split is required with a curves table")
    if args.T is not None or args.tokens is not None:
        raise UsageError("--T / --tokens only go with --params")
    df = read_table(args.curves, what="curves table")
    df.index = pd.RangeIndex(1, len(df) + 1)  # messages count data rows from 1, as `cptlaws fit` does
    ratios = None
    if args.ratios:
        rt = read_table(args.ratios, what="ratios table")
        missing = [c for c in ("run_id", "ratio") if c not in rt.columns]
        if missing:
            raise UsageError(f"{args.ratios}: missing column(s) {missing} (have {list(rt.columns)})")
        ratios = {}
        for i, (rid, r) in enumerate(zip(rt["run_id"].astype(str), rt["ratio"])):
            try:
                ratios[rid] = float(r)
            except (TypeError, ValueError):
                raise UsageError(f"{args.ratios}: row {i + 1} (run {rid!r}): ratio {r!r} is not a number") from None
    baseline: str | dict = "branch"
    if args.baseline:
        baseline = {}
        for item in args.baseline:
            split, sep, val = item.partition("=")
            try:
                baseline[split] = float(val)
            except ValueError:
                sep = ""
            if not sep or not split:
                raise UsageError(f"--baseline: expected SPLIT=LOSS, got {item!r}")
    result = cmr_from_curves(
        df,
        domain_split=args.domain_split,
        general_split=args.general_split,
        x=args.x,
        t_unit=args.t_unit if args.t_unit is not None else 1.0,
        t_origin=args.t_origin,
        ratios=ratios,
        baseline=baseline,
        eps=args.eps,
        lam=args.lam,
        T_max=args.t_max,
        n_prefix=args.n_prefix,
        interp=args.interp,
        tolerance_from=args.tolerance_from,
        loss=args.loss,
        f_scale=args.f_scale,
        source=str(args.curves),
    )
    records = result["tables"]["increments"]
    if args.table_out:
        tab = pd.DataFrame.from_records(records)
        if args.table_out.lower().endswith(".csv"):
            write_text(args.table_out, tab.to_csv(index=False))
        else:
            write_parquet(args.table_out, tab)
        # the per-point table lives in its own file; keep the JSON small
        result = {**result, "tables": {"increments": str(args.table_out)}}
    _emit(result, args.out)
    if args.out:
        c = result["cmr"]
        shown = "none" if c["cmr"] is None else f"{c['cmr']:.4f}"
        print(f"CMR = {shown} ({c['status']}): {c['message']} -> {args.out}")
    return 0
