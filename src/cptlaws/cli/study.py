"""`cptlaws study ...`: the study-level steps the workflow rules call.

cptlaws study validate CONFIG.yaml            check a study config, print its runs
cptlaws study run-config --spec JSON --config-out F --row-out F
cptlaws study collect --runs DIR... --out results/tables [--lam 0.999]
cptlaws study fit {cpt,replay,cmr} --tables DIR --settings JSON --out results/fits
cptlaws study check --tables DIR --settings JSON [--cmr FILE] --out results/checks
"""

from __future__ import annotations

import json
import sys

from cptlaws.errors import UsageError


def _settings(text: str) -> dict:
    try:
        out = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--settings is not valid JSON: {exc}") from None
    if not isinstance(out, dict) or "fits" not in out:
        raise UsageError("--settings must be a JSON object with a 'fits' key (the study config's fits block)")
    return out


def cmd_study_validate(args) -> int:
    from cptlaws.study.config import load_study

    study = load_study(args.config)
    print(f"{args.config}: ok, {len(study.pt_runs)} PT run(s), {len(study.cpt_runs)} CPT run(s)")
    for note in study.notes:
        print(note)
    if args.list:
        for rid in study.runs:
            print(rid)
    return 0


def cmd_study_run_config(args) -> int:
    from cptlaws.study.tables import write_run_config

    write_run_config(args.spec, args.config_out, args.row_out)
    return 0


def cmd_study_collect(args) -> int:
    from cptlaws.study.tables import collect

    t = collect(args.runs, args.out, lam=args.lam)
    print(f"collected {len(t['runs'])} runs, {len(t['curves'])} curve points -> {args.out}")
    return 0


def cmd_study_fit(args) -> int:
    from cptlaws.study.fits import fit_study

    doc = fit_study(args.analysis, args.tables, _settings(args.settings), args.out)
    for e in doc["fits"]:
        tag = ", ".join(f"{k}={e[k]}" for k in ("model", "domain", "split") if k in e)
        if "error" in e:
            print(f"{args.analysis} [{tag}]: FAILED: {e['error']}", file=sys.stderr)
        elif "skipped" in e:
            print(f"{args.analysis} [{tag}]: skipped: {e['skipped']}")
        elif "fit_quality" in e:
            print(
                f"{args.analysis} [{tag}]: R2 {e['fit_quality']['r2']:.4f}, mean rel. err {e['fit_quality']['mean_rel']:.4%}"
            )
        else:
            print(f"{args.analysis} [{tag}]: CMR {e.get('cmr')} ({e.get('status')})")
    return 0


def cmd_study_check(args) -> int:
    from cptlaws.study.checks import run_checks

    df = run_checks(args.tables, _settings(args.settings), args.out, cmr_summary=args.cmr)
    print(f"{int(df['passed'].sum())} of {len(df)} held-out rows passed -> {args.out}/heldout.md")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("study", help="study-level steps used by the Snakemake workflow")
    sub = p.add_subparsers(dest="study_command", metavar="STEP", required=True)

    v = sub.add_parser("validate", help="validate a study config and list its runs")
    v.add_argument("config")
    v.add_argument("--list", action="store_true", help="print every run id")
    v.set_defaults(func=cmd_study_validate)

    r = sub.add_parser("run-config", help="write one run's training config and table row from its spec")
    r.add_argument("--spec", required=True, help='JSON {"train": run config, "row": runs.parquet row}')
    r.add_argument("--config-out", required=True)
    r.add_argument("--row-out", required=True)
    r.set_defaults(func=cmd_study_run_config)

    c = sub.add_parser("collect", help="collect run outputs into runs/curves/lrs parquet tables")
    c.add_argument("--runs", nargs="+", required=True, help="run directories")
    c.add_argument("--out", required=True, help="tables directory")
    c.add_argument("--lam", type=float, default=0.999, help="lambda of the S2 areas in curves.parquet")
    c.set_defaults(func=cmd_study_collect)

    f = sub.add_parser("fit", help="study-level fits: CPT law, replay law, CMR analysis")
    f.add_argument("analysis", choices=["cpt", "replay", "cmr"])
    f.add_argument("--tables", required=True)
    f.add_argument("--settings", required=True, help="JSON with the config's 'fits' block")
    f.add_argument("--out", required=True)
    f.set_defaults(func=cmd_study_fit)

    k = sub.add_parser("check", help="held-out prediction checks declared in the config")
    k.add_argument("--tables", required=True)
    k.add_argument("--settings", required=True, help="JSON with the config's 'fits' and 'checks' blocks")
    k.add_argument("--cmr", help="summary/cmr.json of the CMR analysis (for checks of kind cmr)")
    k.add_argument("--out", required=True)
    k.set_defaults(func=cmd_study_check)
