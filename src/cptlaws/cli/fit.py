"""`cptlaws fit` (fit a law to curves, check held-out runs) and `cptlaws predict` (evaluate a saved fit
on new schedules). Input formats: docs/fitting.md."""

from __future__ import annotations

import json
from pathlib import Path

from cptlaws.errors import InputError, UsageError


def check_out(path: str | None, flag: str = "--out") -> None:
    """An output path's directory must exist: a typo in --out must not create a directory tree."""
    if path and not Path(path).parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {Path(path).parent} does not exist (create it first)")


def _runs(values) -> list[str]:
    out = []
    for v in values or []:
        out += [x for x in str(v).split(",") if x]
    return out


def _law_options(pairs) -> dict:
    opts = {}
    for p in pairs or []:
        if "=" not in p:
            raise UsageError(f"--law-option {p!r}: expected KEY=VALUE")
        k, v = p.split("=", 1)
        try:
            opts[k] = json.loads(v)
        except json.JSONDecodeError:
            opts[k] = v
    return opts


def cmd_fit(args) -> int:
    from cptlaws.fitting import fit_law
    from cptlaws.fitting.metrics import evaluate
    from cptlaws.io import write_json, write_table

    fit_c, pred_c, pred_runs = _fit_inputs(args)
    opts = _law_options(args.law_option)
    if args.split_role:
        opts["split_role"] = args.split_role
    lam = args.lam if args.lam == "fit" else float(args.lam)
    law = args.law
    if law == "auto":
        from cptlaws.laws import choose_law

        law, why = choose_law(fit_c)
        print(f"--law auto: {law} ({why})")
    fit = fit_law(
        law,
        fit_c,
        n_starts=args.starts,
        lam=lam,
        bootstrap=args.bootstrap,
        seed=args.seed,
        warmup_as_peak=args.warmup == "peak",
        drop_warmup=not args.keep_warmup,
        drop_first_frac=args.drop_first_frac,
        law_options=opts,
    )
    if law in ("cpt_open", "replay_open"):  # refuse a fit whose S1_pt the curves do not determine
        from cptlaws.laws.open import check_identified

        fit.diagnostics["identifiability"] = check_identified(fit, fit_c)
    if pred_c:
        fit.heldout = evaluate(fit, pred_c, fit.options["huber_delta"], fit.options["drop_warmup"])
    write_json(args.out, fit.to_dict())
    if args.predictions:
        df = fit.predict(fit_c + pred_c, band=True)
        df["heldout"] = df["run_id"].isin(pred_runs)
        write_table(args.predictions, df)
    _print_fit(fit)
    return 0


def _fit_inputs(args):
    """Checked options and the curves: (fit curves, held-out curves, held-out run names)."""
    from cptlaws.fitting.curves import load_curves

    if args.lr and args.schedules:
        raise UsageError("give at most one of --lr and --schedules")
    check_out(args.out)
    check_out(args.predictions, "--predictions")
    fit_runs, pred_runs = _runs(args.fit_runs), _runs(args.predict_runs)
    both = sorted(set(fit_runs) & set(pred_runs))
    if both:
        raise UsageError(f"run(s) {both} are in both --fit-runs and --predict-runs")
    if args.predictions and Path(args.predictions).suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UsageError(f"{args.predictions}: --predictions must end in .parquet or .csv")  # before any output
    # only the named runs need an LR history, when runs are named
    wanted = sorted(set(fit_runs) | set(pred_runs)) if fit_runs else None
    curves = load_curves(
        args.curves,
        lr_path=args.lr,
        schedules_yaml=args.schedules,
        split=args.split,
        runs=wanted,
        warmup_steps=args.warmup_steps,
    )
    names = {c.run_id for c in curves}
    missing = sorted((set(fit_runs) | set(pred_runs)) - names)
    if missing:
        raise UsageError(f"{args.curves}: run(s) {missing} not found (runs: {sorted(names)})")
    splits = sorted({c.split for c in curves})
    if len(splits) > 1:
        raise UsageError(f"{args.curves}: several validation sets {splits}: choose one with --split")
    if not fit_runs:
        fit_runs = sorted(names - set(pred_runs))
    fit_c = [c for c in curves if c.run_id in fit_runs]
    pred_c = [c for c in curves if c.run_id in pred_runs]
    return fit_c, pred_c, pred_runs


def _print_fit(fit) -> None:
    d = fit.diagnostics
    print(
        f"{fit.law}: objective {d['objective']:.4g}, {d['n_points']} points, lambda {fit.lam:.5f}, "
        f"{d['n_near_best']}/{d['n_refined']} refined starts within 1% of best, {d['wall_s']:.2f} s"
    )
    print("  " + ", ".join(f"{k}={v:.5g}" for k, v in fit.params.items()))
    if d["at_bound"]:
        print(f"  at a bound: {', '.join(d['at_bound'])}")
    if fit.heldout:
        m = fit.heldout["mean"]
        print(
            f"  held-out ({len(fit.heldout['per_run'])} runs): MAE {m['mae']:.5f}  RMSE {m['rmse']:.5f}  "
            f"R2 {m['r2']:.4f}  worst rel {100 * m['worst_rel']:.3f}%"
        )


def cmd_predict(args) -> int:
    import numpy as np

    from cptlaws.fitting.curves import entry_history, load_schedules
    from cptlaws.io import write_table

    check_out(args.out)
    fit = _read_fit(args.fit)
    entries = load_schedules(args.schedules)
    wanted = _runs(args.runs) or list(entries)
    curves = []
    for run in wanted:
        if run not in entries:
            raise InputError(f"{args.schedules}: run '{run}' not found (runs: {sorted(entries)})")
        h = entry_history(entries[run], f"{args.schedules}: run '{run}'")
        total = h["lrs"].size
        if args.steps:
            steps = np.array(sorted({int(s) for s in _runs(args.steps)}), dtype=np.int64)
            if steps.size and (steps.min() < 0 or steps.max() > total):
                raise UsageError(f"--steps: run '{run}' has {total} updates; steps must be in 0..{total}")
        else:
            every = args.every or max(1, total // 200)
            steps = np.unique(np.append(np.arange(every, total + 1, every), total))
        curves.append(_pred_curve(run, h, steps, fit.split))
    fit.get_law().check_curves(curves)
    df = fit.predict(curves, band=bool(fit.bootstrap_params)).drop(columns=["loss"])
    write_table(args.out, df)
    print(f"predicted {len(df)} points of {len(curves)} run(s) with law '{fit.law}' -> {args.out}")
    return 0


def _read_fit(path: str):
    """A saved fit that can predict: a JSON object with the law and finite parameters; errors name the file."""
    import math

    from cptlaws.fitting import FitResult

    obj = _fit_object(path)
    try:
        fit = FitResult.from_dict(obj)
    except InputError as exc:
        raise InputError(f"{path}: {str(exc).removeprefix('fit JSON: ')} (fit JSON)") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{path}: not a fit JSON written by `cptlaws fit` ({exc})") from None
    bad = [k for k, v in fit.params.items() if not math.isfinite(v)]
    if bad:
        raise InputError(
            f"{path}: parameter(s) {', '.join(f'{k} = {fit.params[k]}' for k in bad)} not finite: the fit failed, "
            "it cannot predict (fit again)"
        )
    return fit


def _fit_object(path: str) -> dict:
    from cptlaws.io import read_json

    obj = read_json(path, "fit JSON")
    if not isinstance(obj, dict):
        raise InputError(f"{path}: a fit JSON is an object with law, params and lam, got a {type(obj).__name__}")
    return obj


def _pred_curve(run, h, steps, split):
    import numpy as np

    from cptlaws.fitting.curves import Curve

    # a placeholder loss of 1 satisfies Curve's checks; predictions never read it
    return Curve(
        run,
        h["lrs"],
        steps,
        np.ones(steps.size),
        transfer=h["transfer"],
        ratio=h["ratio"],
        n_params=h["n_params"],
        warmup_steps=h["warmup_steps"],
        split=split or "general",
    )


def register(sub) -> None:
    from cptlaws.laws import LAWS

    p = sub.add_parser(
        "fit",
        help="fit a scaling law to loss curves; check held-out runs",
        description="Fit a law to loss curves (CSV/parquet: run, step, loss[, split]). See docs/fitting.md.",
    )
    p.add_argument("curves", help="curves table (.csv or .parquet)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--lr", help="dense per-step LR table: run, step (1..T), lr")
    src.add_argument("--schedules", help="YAML of per-run schedule specs (docs/fitting.md)")
    p.add_argument(
        "--law",
        default="auto",
        choices=sorted(LAWS) + ["auto"],
        help="law to fit; auto (default): cpt / replay for runs with a PT history (transfer step), the open-model "
        "cpt_open / replay_open for runs without one (docs/open-models.md)",
    )
    p.add_argument("--law-option", action="append", metavar="KEY=VALUE", help="law constructor option (repeatable)")
    p.add_argument("--split-role", choices=("general", "domain"), help="replay laws: which form of Eq. 8 applies")
    p.add_argument("--fit-runs", nargs="+", help="runs to fit (default: all not predicted); comma or space separated")
    p.add_argument("--predict-runs", nargs="+", help="held-out runs to predict and score")
    p.add_argument("--split", help="validation set to use (the curves' split column)")
    p.add_argument("--lam", default="0.999", help="annealing momentum lambda, or 'fit' (default 0.999)")
    p.add_argument("--starts", type=int, default=500, help="multi-start grid size (default 500)")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap refits over runs (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--warmup",
        choices=("peak", "real"),
        default="peak",
        help="count PT warm-up steps at the peak LR (reference code) or at their real LR",
    )
    p.add_argument("--warmup-steps", type=int, help="override the PT warm-up length")
    p.add_argument("--keep-warmup", action="store_true", help="keep warm-up points in the fit")
    p.add_argument("--drop-first-frac", type=float, default=0.0, help="drop points before this fraction of each run")
    p.add_argument("--out", required=True, help="fit JSON")
    p.add_argument("--predictions", help="predictions table (.parquet or .csv)")
    p.set_defaults(func=cmd_fit)

    q = sub.add_parser(
        "predict",
        help="evaluate a saved fit on new schedules",
        description="Predict the loss of schedules (YAML, docs/fitting.md) with a saved fit JSON.",
    )
    q.add_argument("fit", help="fit JSON written by `cptlaws fit`")
    q.add_argument("--schedules", required=True, help="YAML of per-run schedule specs")
    q.add_argument("--runs", nargs="+", help="runs of the YAML to predict (default: all)")
    q.add_argument("--steps", nargs="+", help="global steps to predict (default: ~200 evenly spaced)")
    q.add_argument("--every", type=int, help="predict every N steps")
    q.add_argument("--out", required=True, help="predictions (.parquet or .csv)")
    q.set_defaults(func=cmd_predict)
