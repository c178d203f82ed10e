"""`cptlaws plan`: recommend a CPT recipe (replay ratio, peak LR, schedule, steps, transfer point) from fitted
CPT laws for a goal; docs/plan.md."""

from __future__ import annotations

from pathlib import Path

from cptlaws.errors import UsageError

SPACE_OPTS = {
    "ratio": "domain share r of the CPT batches (replay = 1 - r)",
    "peak_lr": "CPT peak LR (lo:hi:n is geometric)",
    "kind": "CPT schedule kinds, comma separated (constant, cosine, linear, wsd)",
    "warmup_steps": "CPT re-warm-up steps",
    "decay_fraction": "wsd: decayed fraction of the CPT phase",
    "final_lr_frac": "final LR / peak LR (cosine, linear, wsd)",
    "steps": "CPT steps",
    "transfer": "PT step the CPT run branches from (sets the loss potential)",
}


def _context(args, docs, entries):
    """The PT run the recipes branch from: --pt-schedule/--pt-steps, else the fit's runs in --schedules."""
    import yaml

    from cptlaws.plan import Context

    domain = args.domain or next((d.get("split") for d in docs if d.get("split") not in (None, "general")), "domain")
    if args.pt_schedule:
        if not args.pt_steps:
            raise UsageError("--pt-schedule needs --pt-steps (the PT run's length)")
        spec, steps = yaml.safe_load(args.pt_schedule), args.pt_steps
    else:
        if not entries:
            raise UsageError(
                "give the PT run: --pt-schedule SPEC --pt-steps N, or the fit's runs (--schedules or --tables)"
            )
        fit_runs = {r for d in docs for r in d.get("fit_runs", [])}
        cpt = {n: e for n, e in entries.items() if "transfer" in e and (not fit_runs or n in fit_runs)}
        if args.pt_run:
            if args.pt_run not in cpt:
                raise UsageError(f"--pt-run {args.pt_run!r}: not a CPT run of the fit (runs: {sorted(cpt)})")
            cpt = {args.pt_run: cpt[args.pt_run]}
        pts = {repr((e["pt_schedule"], int(e["pt_steps"]))): (n, e) for n, e in cpt.items()}
        if not pts:
            raise UsageError("the fit's runs include no CPT run to take the PT run from")
        if len(pts) > 1:
            names = sorted(n for n, _ in pts.values())
            raise UsageError(
                f"{args.schedules}: the CPT runs branch from {len(pts)} PT schedules: choose one with --pt-run (e.g. {names[0]})"
            )
        _, e = next(iter(pts.values()))
        spec, steps = e["pt_schedule"], int(e["pt_steps"])
    if not isinstance(spec, dict):
        raise UsageError(f"--pt-schedule: expected a mapping (JSON or YAML), got {spec!r}")
    name = args.pt_name or spec.get("name") or "pt"
    return Context(
        spec, steps, pt_name=name, domain=domain, tokens_per_step=args.tokens_per_step, n_params=args.n_params
    )


def cmd_plan(args) -> int:
    from cptlaws.fitting.curves import load_schedules
    from cptlaws.io import read_json, write_json
    from cptlaws.plan import Goal, plan
    from cptlaws.plan.space import parse_values

    if args.figure and Path(args.figure).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"{args.figure}: --figure must end in .png, .pdf or .svg")
    if not 0.0 < args.level < 1.0:
        raise UsageError(f"--level {args.level:g} must be in (0, 1)")
    if args.schedules and args.tables:
        raise UsageError("give at most one of --schedules and --tables")
    docs = [read_json(p, "fit JSON") for p in args.fits]
    entries = load_schedules(args.schedules) if args.schedules else None
    if args.tables:
        from cptlaws.io import read_table
        from cptlaws.plan.inputs import entries_from_runs_table

        entries, consts = entries_from_runs_table(read_table(Path(args.tables) / "runs.parquet", what="runs table"))
        if args.tokens_per_step is None:
            args.tokens_per_step = consts.get("tokens_per_step")
    goal = Goal(args.goal, args.lam_general, args.lam_domain, args.eps, args.tokens, args.tokens_per_step)
    given = {d: parse_values(d, getattr(args, d)) for d in SPACE_OPTS if getattr(args, d) is not None}
    ctx = _context(args, docs, entries)
    doc = plan(docs, goal, ctx, given, entries, level=args.level, top=args.top, names=args.fits)
    doc["inputs"] = {"fits": [str(p) for p in args.fits], "schedules": args.schedules, "tables": args.tables}
    write_json(args.out, doc)
    if args.figure:
        from cptlaws.plots.fig_plan import write_plan_figure

        write_plan_figure(doc, args.figure)
    _print(doc, args)
    return 0


def _print(doc: dict, args) -> None:
    rec = doc["recommendation"]
    r = rec["recipe"]
    shape = ", ".join(f"{k} {r[k]:g}" for k in ("warmup_steps", "decay_fraction", "final_lr_frac") if k in r)
    print(
        f"plan ({doc['goal']['kind']}): ratio {r['ratio']:.4g}, peak LR {r['peak_lr']:.4g}, {r['kind']} ({shape}), "
        f"{r['steps']} steps from PT step {r['transfer']} (loss potential {r['loss_potential']:.3g})"
    )
    for role, p in rec["predicted"].items():
        iv = p["interval"]
        band = f" [{iv['L_end'][0]:.4f}, {iv['L_end'][1]:.4f}]" if iv and iv["L_end"] else ""
        print(f"  {role}: L {p['L_T']:.4f} -> {p['L_end']:.4f}{band} (dL {p['dL']:+.4f})")
    for role, f in doc["fits"].items():
        if f["n_bootstrap"] and f["n_distinct_bootstrap"] < 2:
            print(
                f"  warning: the {role} fit's {f['n_bootstrap']} bootstrap draws are identical: its interval is no uncertainty"
            )
    print(f"  goal value {rec['goal_value']:.5g}; {doc['n_feasible']}/{doc['n_candidates']} grid recipes feasible")
    for e in rec["extrapolation"]:
        print(f"  extrapolation: {e['dim']} = {e['value']} outside the fit's runs {e['covered']}")
    if rec["at_search_edge"]:
        print(f"  at the edge of the searched range: {', '.join(rec['at_search_edge'])}")
    print(f"  -> {args.out}" + (f", {args.figure}" if args.figure else ""))


def register(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="recommend a CPT recipe from fitted CPT laws",
        description="Recommend a CPT recipe (ratio, peak LR, schedule, steps, transfer point) from fit JSONs of the "
        "general and domain loss for a goal. See docs/plan.md.",
    )
    p.add_argument("fits", nargs="+", metavar="FIT.json", help="fit JSON(s): one per validation set (general, domain)")
    p.add_argument(
        "--goal", required=True, choices=("balance", "tolerance", "budget")
    )  # cptlaws.plan.goals.GOALS (no import here)
    p.add_argument("--lam-general", type=float, default=1.0, help="balance: weight of dL_general (default 1)")
    p.add_argument("--lam-domain", type=float, default=1.0, help="balance: weight of dL_domain (default 1)")
    p.add_argument("--eps", type=float, help="general loss may rise at most this much above its PT value (nats)")
    p.add_argument("--tokens", type=float, help="CPT token budget (steps x tokens/step <= tokens)")
    p.add_argument("--tokens-per-step", type=int, help="batch size x sequence length")
    p.add_argument("--schedules", help="schedules YAML of the fit's runs: PT run and coverage (docs/fitting.md)")
    p.add_argument("--tables", help="a study's results/tables (runs.parquet): the fit's runs, PT run and coverage")
    p.add_argument("--pt-schedule", help="PT schedule spec (JSON/YAML mapping), instead of --schedules")
    p.add_argument("--pt-steps", type=int, help="PT run length, with --pt-schedule")
    p.add_argument("--pt-run", help="take the PT run from this CPT run of --schedules")
    p.add_argument("--pt-name", help="PT schedule name in the recipe's run spec (default: its name, else pt)")
    p.add_argument("--domain", help="domain name in the run spec (default: the domain fit's split)")
    p.add_argument("--n-params", type=float, help="non-embedding parameters (millions), for the size law")
    for dim, help_ in SPACE_OPTS.items():
        p.add_argument("--" + dim.replace("_", "-"), dest=dim, metavar="a,b|lo:hi[:n]", help=help_)
    p.add_argument("--level", type=float, default=0.9, help="interval level (default 0.9)")
    p.add_argument("--top", type=int, default=5, help="runners-up to report (default 5)")
    p.add_argument("--out", required=True, help="plan JSON")
    p.add_argument("--figure", help="plan figure (.png, .pdf or .svg)")
    p.set_defaults(func=cmd_plan)
