"""`cptlaws plan` / cptlaws.plan: recipes from fitted CPT laws (docs/plan.md).

Known-law tests build the fits from known parameters (no fitting) and compare the planner with optima found
independently: the replay_flex law written out below and evaluated with scipy on the exact areas. The CLI
test fits synthetic curves with the real fitting code first.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq, minimize, minimize_scalar

from cptlaws.areas import compute_areas
from cptlaws.cli import main
from cptlaws.errors import InputError, UsageError
from cptlaws.fitting import FitResult
from cptlaws.fitting.curves import Curve, entry_history
from cptlaws.plan import Context, Goal, plan
from cptlaws.schedules import phase_lrs

PT = {"kind": "constant", "peak_lr": 2.0e-3, "warmup_steps": 30}
PT_STEPS, T, TPS = 600, 300, 2048
GEN = dict(L0=2.5, A=0.5, alpha=0.5, C1=0.3, C2=0.3, B=0.4, E=50.0, beta=0.5, a1=0.0, a2=3.0)
DOM = dict(L0=2.4, A=0.5, alpha=0.6, C1=0.3, C2=0.3, B=-0.8, E=100.0, beta=0.5, a1=0.0, a2=-3.0)
# tolerances the planner must meet against the independent optimum
TOL_RATIO, TOL_LOG_LR, TOL_STEPS = 0.02, 0.05, 5


def cos(lr, warm=10):
    return {"kind": "cosine", "peak_lr": lr, "warmup_steps": warm, "final_lr": 0.1 * lr}


def true_losses(p, role, r, lr, steps, transfer=T, pt=PT):
    """replay_flex (laws/replay.py) written out: (L at the transfer point, L at the end of CPT)."""
    lrs = phase_lrs(pt, PT_STEPS, transfer, cos(lr), steps)
    a = compute_areas(lrs, 0.999, transfer, 30).at([transfer, transfer + steps])
    fr = 1.0 - r if role == "general" else r
    mix = math.expm1(p["a2"] * r) / math.expm1(p["a2"])
    L = (
        p["L0"] + p["A"] * a.S1 ** -p["alpha"] - p["C1"] * a.S2_pt - p["C2"] * a.S2_cpt * math.exp(p["a1"] * fr)
        + p["B"] * (1 - (1 + p["E"] * a.S1_cpt) ** -p["beta"]) * mix
    )  # fmt: skip
    return L[0], L[1]


def true_dl(p, role, r, lr, steps):
    L_T, L_end = true_losses(p, role, r, lr, steps)
    return L_end - L_T


def docs(gen=GEN, dom=DOM, law="replay_flex"):
    opts = (lambda role: {"split_role": role}) if law.startswith("replay") else (lambda role: {})
    g = FitResult(law, dict(gen), 0.999, split="general", law_options=opts("general")).to_dict()
    d = FitResult(law, dict(dom), 0.999, split="code", law_options=opts("domain")).to_dict()
    return [g, d]


CTX = Context(PT, PT_STEPS, pt_name="const", domain="code", tokens_per_step=TPS)
SPACE = {
    "ratio": [i / 10 for i in range(11)],
    "peak_lr": list(np.geomspace(5.0e-4, 8.0e-3, 7)),
    "kind": ["cosine"],
    "warmup_steps": [10],
    "final_lr_frac": [0.1],
    "steps": [300],
    "transfer": [T],
}


def balance_optimum(lam_g, lam_d=1.0):
    """argmin over (r, log lr) of the Eq. 5 balance, by Nelder-Mead from the best of a coarse grid."""

    def f(x):
        r, lr = float(np.clip(x[0], 0, 1)), math.exp(x[1])
        return lam_g * true_dl(GEN, "general", r, lr, 300) + lam_d * true_dl(DOM, "domain", r, lr, 300)

    grid = [(r, math.log(lr)) for r in np.linspace(0.05, 0.95, 10) for lr in np.geomspace(6e-4, 7e-3, 8)]
    x0 = min(grid, key=f)
    res = minimize(f, x0, method="Nelder-Mead", options={"xatol": 1e-5, "fatol": 1e-10})
    return float(res.x[0]), math.exp(res.x[1])


def test_balance_finds_the_known_optimum_ratio_and_lr():
    r_star, lr_star = balance_optimum(1.0)
    assert 0.1 < r_star < 0.9 and 6e-4 < lr_star < 7e-3  # an interior optimum: the test can fail
    rec = plan(docs(), Goal("balance"), CTX, SPACE)["recommendation"]
    assert abs(rec["recipe"]["ratio"] - r_star) < TOL_RATIO
    assert abs(math.log(rec["recipe"]["peak_lr"] / lr_star)) < TOL_LOG_LR
    want = true_dl(GEN, "general", r_star, lr_star, 300) + true_dl(DOM, "domain", r_star, lr_star, 300)
    assert rec["goal_value"] == pytest.approx(want, abs=1e-4)
    assert rec["goal_value"] == pytest.approx(
        rec["predicted"]["general"]["dL"] + rec["predicted"]["domain"]["dL"], rel=1e-12
    )


def test_balance_optimum_moves_toward_more_replay_as_lam_general_grows():
    ratios = []
    for lam in (0.5, 1.0, 2.0, 4.0):
        rec = plan(docs(), Goal("balance", lam_general=lam), CTX, SPACE)["recommendation"]
        r_star, _ = balance_optimum(lam)
        assert abs(rec["recipe"]["ratio"] - r_star) < TOL_RATIO
        ratios.append(rec["recipe"]["ratio"])
    assert all(b < a - 0.03 for a, b in zip(ratios, ratios[1:])), ratios  # lower domain share = more replay


def test_tolerance_finds_the_largest_ratio_within_eps():
    eps, lr = 0.05, 2.0e-3
    space = {**SPACE, "peak_lr": [lr]}
    # domain loss falls with the domain share, so the optimum is where the general rise reaches eps
    r_star = brentq(lambda r: true_dl(GEN, "general", r, lr, 300) - eps, 0.0, 1.0, xtol=1e-8)
    doms = [true_losses(DOM, "domain", r, lr, 300)[1] for r in np.linspace(0, 1, 21)]
    assert np.all(np.diff(doms) < 0)
    rec = plan(docs(), Goal("tolerance", eps=eps), CTX, space)["recommendation"]
    assert rec["recipe"]["ratio"] <= r_star + 1e-9
    assert abs(rec["recipe"]["ratio"] - r_star) < TOL_RATIO
    assert rec["predicted"]["general"]["dL"] <= eps
    # with the LR free too the constraint still holds and the domain loss is no worse
    free = plan(docs(), Goal("tolerance", eps=eps), CTX, SPACE)["recommendation"]
    assert free["predicted"]["general"]["dL"] <= eps
    assert free["predicted"]["domain"]["L_end"] <= rec["predicted"]["domain"]["L_end"] + 1e-12


def test_budget_finds_the_step_limit_and_best_lr():
    budget_steps = 237
    space = {**SPACE, "ratio": [1.0], "steps": [100, 200, 300, 400, 500]}
    # known optimum: the domain loss falls with the CPT steps, so use the whole budget; LR by a 1-D search
    ends = [true_losses(DOM, "domain", 1.0, 2e-3, s)[1] for s in range(100, 501, 20)]
    assert np.all(np.diff(ends) < 0)
    lr_star = math.exp(
        minimize_scalar(
            lambda x: true_losses(DOM, "domain", 1.0, math.exp(x), budget_steps)[1],
            bounds=(math.log(5e-4), math.log(8e-3)), method="bounded", options={"xatol": 1e-6},
        ).x
    )  # fmt: skip
    doc = plan(docs(), Goal("budget", tokens=budget_steps * TPS, tokens_per_step=TPS), CTX, space)
    rec = doc["recommendation"]["recipe"]
    assert budget_steps - TOL_STEPS <= rec["steps"] <= budget_steps
    assert rec["tokens"] <= budget_steps * TPS
    assert abs(math.log(rec["peak_lr"] / lr_star)) < TOL_LOG_LR
    assert all(r["recipe"]["steps"] * TPS <= budget_steps * TPS for r in doc["runners_up"])


def test_tolerance_finds_the_best_transfer_point_of_an_annealed_pt_run():
    """From a WSD PT run a later branch (lower loss potential) gives a lower final domain loss but a larger
    general rise over the transfer point: at r = 1 the eps constraint binds at an interior transfer step."""
    wsd = {"kind": "wsd", "peak_lr": 2.0e-3, "warmup_steps": 30, "final_lr": 2.0e-4, "decay_fraction": 0.8}
    ctx = Context(wsd, PT_STEPS, domain="code", tokens_per_step=TPS)
    eps, lr = 0.05, 2.0e-3
    rows = []
    for t in range(50, PT_STEPS + 1):
        g, d = true_losses(GEN, "general", 1.0, lr, 300, t, wsd), true_losses(DOM, "domain", 1.0, lr, 300, t, wsd)
        rows.append((t, g[1] - g[0], d[1]))
    ok = [r for r in rows if r[1] <= eps]
    t_star = min(ok, key=lambda r: r[2])[0]
    assert 150 < t_star < 500, t_star  # interior, inside the PT decay (from step 120): the test can fail
    space = {**SPACE, "ratio": [1.0], "peak_lr": [lr], "transfer": list(range(50, 601, 110))}
    rec = plan(docs(), Goal("tolerance", eps=eps), ctx, space)["recommendation"]
    assert abs(rec["recipe"]["transfer"] - t_star) <= TOL_STEPS
    assert rec["predicted"]["general"]["dL"] <= eps
    assert rec["recipe"]["loss_potential"] == pytest.approx(ctx.pt_lrs[rec["recipe"]["transfer"] - 1] / 2.0e-3)
    assert rec["recipe"]["loss_potential"] < 1.0


def test_infeasible_eps_gives_a_message_not_a_recipe():
    space = {**SPACE, "ratio": [0.9, 1.0], "peak_lr": [2.0e-3, 4.0e-3]}
    lowest = min(true_dl(GEN, "general", r, lr, 300) for r in (0.9, 1.0) for lr in space["peak_lr"])
    assert lowest > 0.001
    with pytest.raises(InputError, match=r"no recipe meets the goal.*eps = 0.001.*smallest predicted rise"):
        plan(docs(), Goal("tolerance", eps=0.001), CTX, space)
    with pytest.raises(InputError, match="budget of"):
        plan(docs(), Goal("budget", tokens=10 * TPS, tokens_per_step=TPS), CTX, space)


def test_recommendation_outside_coverage_is_flagged_as_extrapolation():
    ds = docs()
    cov = {
        "ratio": {"min": 0.25, "max": 1.0, "values": [0.25, 0.5, 0.75, 1.0]},
        "peak_lr": {"min": 2.0e-3, "max": 2.0e-3, "values": [2.0e-3]},
        "kind": {"values": ["cosine"]},
        "steps": {"min": 300, "max": 300, "values": [300]},
        "transfer": {"min": 300, "max": 300, "values": [300]},
    }
    for d in ds:
        d["coverage"] = cov
    rec = plan(ds, Goal("balance"), CTX, SPACE)["recommendation"]
    flagged = {e["dim"]: e for e in rec["extrapolation"]}
    assert set(flagged) == {"peak_lr"}, flagged  # the optimum LR (~2.8e-3) is outside the one trained LR
    assert flagged["peak_lr"]["covered"] == [2.0e-3, 2.0e-3]
    # the defaults come from the coverage: every recipe inside it, nothing flagged
    inside = plan(ds, Goal("balance"), CTX)["recommendation"]
    assert inside["extrapolation"] == [] and inside["recipe"]["peak_lr"] == pytest.approx(2.0e-3)
    assert 0.25 <= inside["recipe"]["ratio"] <= 1.0


def test_without_coverage_the_bounds_are_required():
    with pytest.raises(UsageError, match="no bounds for 'peak_lr'.*--peak-lr"):
        plan(docs(), Goal("balance"), CTX, {k: v for k, v in SPACE.items() if k != "peak_lr"})


def test_cpt_law_has_no_ratio_dimension_and_goals_check_their_fits():
    keys = ("L0", "A", "alpha", "C1", "C2", "B", "E", "beta")
    ds = docs({k: GEN[k] for k in keys}, {k: DOM[k] for k in keys}, law="cpt")
    doc = plan(ds, Goal("balance"), CTX, {**SPACE, "ratio": None})
    assert "ratio" not in doc["space"]["law_dims"] and doc["recommendation"]["recipe"]["ratio"] == 1.0
    assert "ratio" not in doc["slices"] and "peak_lr" in doc["slices"]
    with pytest.raises(UsageError, match="no ratio term"):
        plan(ds, Goal("balance"), CTX, SPACE)
    with pytest.raises(InputError, match="needs a fit of the general loss"):
        plan(ds[1:], Goal("tolerance", eps=0.05), CTX, SPACE)
    with pytest.raises(InputError, match="both fits of the general loss"):
        plan([ds[0], ds[0]], Goal("balance"), CTX, SPACE)


def test_coverage_and_pt_run_from_a_study_runs_table():
    import json as _json

    from cptlaws.plan.inputs import coverage, entries_from_runs_table

    pt = {**PT, "name": "const"}
    rows = [{"run_id": "pt", "phase": "pt", "parent": "", "steps": PT_STEPS, "ratio": 0.0, "transfer_step": 0,
             "schedule_json": _json.dumps(pt), "cpt_schedule_json": "", "batch_size": 16, "seq_len": 128}]  # fmt: skip
    for r, lr, t in ((0.25, 2.0e-3, 300), (1.0, 1.0e-3, 150)):
        rows.append({"run_id": f"c{r}", "phase": "cpt", "parent": "pt", "steps": 300, "ratio": r, "transfer_step": t,
                     "schedule_json": _json.dumps(pt), "cpt_schedule_json": _json.dumps({**cos(lr), "name": "cos"}),
                     "batch_size": 16, "seq_len": 128})  # fmt: skip
    entries, consts = entries_from_runs_table(pd.DataFrame(rows))
    assert consts == {"tokens_per_step": 2048} and set(entries) == {"c0.25", "c1.0"}
    assert entries["c1.0"]["pt_steps"] == PT_STEPS and entries["c1.0"]["transfer"] == 150
    cov = coverage([{"fit_runs": ["pt", "c0.25", "c1.0"]}], entries)
    assert cov["ratio"] == {"min": 0.25, "max": 1.0, "values": [0.25, 1.0]}
    assert cov["peak_lr"]["values"] == [1.0e-3, 2.0e-3] and cov["transfer"]["values"] == [150, 300]
    assert cov["final_lr_frac"]["values"] == [0.1] and cov["kind"] == {"values": ["cosine"]}


# ------------------------------------------------------------------------------------------------ CLI
RUNS = {f"r{r}": r for r in (0.25, 0.5, 0.75, 1.0)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Synthetic curves from the known law, fitted by `cptlaws fit` (general and code), with the schedules
    YAML of the runs."""
    import yaml

    tmp = tmp_path_factory.mktemp("plan")
    entries = {"pt": {"schedule": PT, "steps": PT_STEPS, "ratio": 0.0}}  # PT: no domain data
    for name, r in RUNS.items():
        entries[name] = {"pt_schedule": PT, "pt_steps": PT_STEPS, "transfer": T, "schedule": cos(2.0e-3),
                         "steps": 300, "ratio": r}  # fmt: skip
    (tmp / "runs.yaml").write_text(yaml.safe_dump({"runs": entries}))
    rng, rows = np.random.default_rng(0), []
    steps = np.arange(50, T + 300 + 1, 25)
    for name, e in entries.items():
        h = entry_history(e, name)
        for role, p, split in (("general", GEN, "general"), ("domain", DOM, "code")):
            if h["transfer"] is None and role == "domain":
                continue  # the PT run is not evaluated on the domain here
            s = steps[steps <= PT_STEPS] if h["transfer"] is None else steps[steps >= T]
            c = Curve(name, h["lrs"], s, np.ones(s.size), transfer=h["transfer"], ratio=h["ratio"], warmup_steps=30)
            law = FitResult("replay_flex", p, 0.999, law_options={"split_role": role})
            y = law.predict_arrays([c])[0] + rng.normal(0, 5e-4, s.size)
            rows += [(name, split, int(a), float(b)) for a, b in zip(s, y)]
    pd.DataFrame(rows, columns=["run", "split", "step", "loss"]).to_csv(tmp / "curves.csv", index=False)
    for split, role in (("general", "general"), ("code", "domain")):
        # every run of the split is fitted (the PT run has no domain curve here)
        rc = main(["fit", str(tmp / "curves.csv"), "--schedules", str(tmp / "runs.yaml"), "--law", "replay_flex",
                   "--split", split, "--split-role", role, "--starts", "100",
                   "--bootstrap", "4", "--out", str(tmp / f"{split}.json")])  # fmt: skip
        assert rc == 0
    return tmp


def test_cli_plan_end_to_end_on_fitted_laws(fitted, capsys):
    from cptlaws.study.config import load_study

    out, fig = fitted / "plan.json", fitted / "plan.png"
    rc = main([
        "plan", str(fitted / "general.json"), str(fitted / "code.json"), "--goal", "balance", "--lam-general", "1",
        "--schedules", str(fitted / "runs.yaml"), "--pt-name", "const", "--peak-lr", "1.0e-3:4.0e-3:5",
        "--out", str(out), "--figure", str(fig),
    ])  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert fig.stat().st_size > 10_000
    rec = doc["recommendation"]
    # coverage from the schedules YAML: ratios 0.25..1, one LR (2e-3): an LR away from it is flagged
    assert doc["space"]["coverage"]["ratio"]["min"] == 0.25 and doc["space"]["values"]["ratio"][0] == 0.25
    lr_flag = [e for e in rec["extrapolation"] if e["dim"] == "peak_lr"]
    assert bool(lr_flag) == (not math.isclose(rec["recipe"]["peak_lr"], 2.0e-3))
    # the fitted law recovers the known law's optimum ratio (searched over 0.25..1)
    r_star, _ = balance_optimum(1.0)
    assert abs(rec["recipe"]["ratio"] - r_star) < 0.1
    # intervals from the fits' bootstrap, runners-up distinct from the recommendation and each other
    for role in ("general", "domain"):
        lo, hi = rec["predicted"][role]["interval"]["L_end"]
        assert lo <= hi and np.isfinite([lo, hi]).all()
    assert rec["goal_interval"][0] <= rec["goal_interval"][1]
    assert doc["intervals"] == "bootstrap" and len(doc["runners_up"]) == 5
    keys = {json.dumps(r["recipe"], sort_keys=True) for r in [rec, *doc["runners_up"]]}
    assert len(keys) == 6
    assert all(r["goal_value"] >= rec["goal_value"] - 1e-12 for r in doc["runners_up"])
    # the run spec is a valid study config fragment that expands to the recommended run
    import yaml

    cfg = yaml.safe_load(open("config/config.yaml"))
    cfg.update(rec["run_spec"])
    cfg["checks"] = []
    study = load_study(cfg)
    (cpt_run,) = [v for v in study.runs.values() if v["train"]["phase"] == "cpt"]
    assert cpt_run["train"]["data"]["ratio"] == pytest.approx(rec["recipe"]["ratio"])
    assert cpt_run["train"]["schedule"]["peak_lr"] == pytest.approx(rec["recipe"]["peak_lr"])
    assert cpt_run["train"]["init"]["transfer_step"] == T
    assert "plan (balance): ratio" in capsys.readouterr().out


def test_cli_plan_infeasible_goal_exits_nonzero_without_output(fitted, capsys):
    out = fitted / "none.json"
    rc = main([
        "plan", str(fitted / "general.json"), str(fitted / "code.json"), "--goal", "tolerance", "--eps", "0.0",
        "--ratio", "0.9,1.0", "--peak-lr", "2.0e-3,4.0e-3", "--schedules", str(fitted / "runs.yaml"), "--out", str(out),
    ])  # fmt: skip
    assert rc == 2 and not out.exists()
    assert "no recipe meets the goal" in capsys.readouterr().err


def test_plan_parser_imports_no_heavy_library():
    import subprocess
    import sys

    code = (
        "import contextlib, io, sys\n"
        "from cptlaws.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    build_parser().parse_args(['plan', '--help'])\n"
        "print(sorted({'pandas', 'scipy', 'torch', 'matplotlib', 'numpy'} & {m.split('.')[0] for m in sys.modules}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]", p.stdout


def test_cli_budget_from_the_domain_fit_alone_with_explicit_pt_run_and_bounds(fitted, capsys):
    out = fitted / "budget.json"
    base = [
        "plan", str(fitted / "code.json"), "--goal", "budget", "--tokens", str(237 * TPS), "--tokens-per-step",
        str(TPS), "--pt-schedule", json.dumps(PT), "--pt-steps", str(PT_STEPS), "--ratio", "0.25:1:4",
        "--peak-lr", "2.0e-3", "--kind", "cosine", "--warmup-steps", "10", "--steps", "100:500:5", "--out", str(out),
    ]  # fmt: skip
    # no schedules / tables: no coverage, so every dimension the law sees needs bounds
    assert main(base) == 2 and not out.exists()
    assert "no bounds for 'transfer'" in capsys.readouterr().err
    assert main([*base, "--transfer", str(T)]) == 0
    doc = json.loads(out.read_text())
    rec = doc["recommendation"]
    assert doc["space"]["coverage"] is None and rec["extrapolation"] == []
    assert set(rec["predicted"]) == {"domain"} and rec["run_spec"]["pt"]["schedules"]["pt"]["kind"] == "constant"
    assert 237 - TOL_STEPS <= rec["recipe"]["steps"] <= 237 and rec["recipe"]["ratio"] == 1.0


@pytest.mark.parametrize("law", ["replay_flex", "cpt"])
def test_batched_predictions_equal_the_fits_own_per_curve_predictions(law):
    from cptlaws.plan.predict import Predictor
    from cptlaws.plan.space import Recipe

    keys = ("L0", "A", "alpha", "C1", "C2", "B", "E", "beta") + (("a1", "a2") if law != "cpt" else ())
    fits = {
        role: FitResult.from_dict(d)
        for role, d in zip(("general", "domain"), docs({k: GEN[k] for k in keys}, {k: DOM[k] for k in keys}, law))
    }
    recipes = [
        Recipe(r, lr, kind, 10, 0.25 if kind == "wsd" else None, None if kind == "constant" else 0.1, steps, t)
        for r in (0.0, 0.5, 1.0) for lr in (1e-3, 3e-3) for kind in ("constant", "wsd")
        for steps, t in ((100, 300), (250, 600))
    ]  # fmt: skip
    pred = Predictor(fits, Context(PT, PT_STEPS, domain="code"))
    got = pred.point(recipes)
    for role, fit in fits.items():
        ref = np.array(fit.predict_arrays(pred.curves(recipes, fit.split)))
        np.testing.assert_allclose(got[role]["L_T"], ref[:, 0], rtol=1e-12)
        np.testing.assert_allclose(got[role]["L_end"], ref[:, 1], rtol=1e-12)
    # and the exact PT + CPT history of schedules.phase_lrs
    r = recipes[5]
    np.testing.assert_array_equal(pred.history(r), phase_lrs(PT, PT_STEPS, r.transfer, r.cpt_schedule(), r.steps))
