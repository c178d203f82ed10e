"""CMR law (Gu et al. 2407.17467): published numbers, parameter recovery, the CMR root-finding on an
interpolated ratio, the whole analysis from a curves table, the CLI, and error messages."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cptlaws import cli, cmr

# ---------------------------------------------------------------------------------------------------
# Published numbers (laws.md section 5)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, expected_pct", [("460M", 29.8), ("940M", 34.9), ("1.6B", 41.4), ("3.1B", 47.8)])
def test_paper_cmr_laws_at_T100(size, expected_pct):
    params = cmr.PAPER_CMR_LAWS[size]
    r = cmr.cmr_scaling_law(params, 100.0)
    assert round(100 * r, 1) == expected_pct
    # 20 B tokens in the paper's unit (0.2 B tokens) is T = 100.
    assert cmr.cmr_scaling_law(dict(zip(("a4", "s4", "b3"), params)), tokens=20e9) == pytest.approx(r, rel=1e-12)


def test_paper_loss_vs_ratio_predicts_25pct():
    # 460M domain losses at T_max for 100/75/50/33 % (33 % = one third), fitted with R = 1 included.
    R = [1.0, 0.75, 0.5, 1 / 3]
    L = [1.4628, 1.4844, 1.5122, 1.5387]
    fit = cmr.fit_loss_vs_ratio(R, L, include_one=True)
    pred = fit.predict(0.25)
    assert abs(pred - 1.5566) <= 0.0005
    # and it is at least as close to the measured 25 % loss (1.5561) as the paper's 0.03 %
    assert abs(pred - 1.5561) / 1.5561 <= 0.0003
    assert fit.diagnostics["ratios_used"] == sorted(R)
    # default: interior ratios only, R = 1 is reported as dropped
    interior = cmr.fit_loss_vs_ratio(R, L)
    assert interior.diagnostics["ratios_dropped"] == [1.0]
    assert interior.diagnostics["exactly_determined"]


# ---------------------------------------------------------------------------------------------------
# Fits and switch point
# ---------------------------------------------------------------------------------------------------

GEN_TRUE = {"a2": 0.08, "s2": 0.3, "a3": -0.02, "s3": 0.6, "b2": 0.01}
DOM_TRUE = {"a1": 0.9, "s1": -0.35, "b1": -0.95}


def test_increment_fits_recover_parameters_noise_free():
    T = np.geomspace(0.5, 100, 40)
    gen = cmr.PowerFit.from_params(GEN_TRUE, (("a2", "s2"), ("a3", "s3")), "b2")
    dom = cmr.PowerFit.from_params(DOM_TRUE, (("a1", "s1"),), "b1")
    g = cmr.fit_increment_general(T, gen.predict(T))
    d = cmr.fit_increment_domain(T, dom.predict(T))
    for k, v in GEN_TRUE.items():
        assert g.params[k] == pytest.approx(v, abs=1e-6), k
    for k, v in DOM_TRUE.items():
        assert d.params[k] == pytest.approx(v, abs=1e-6), k
    assert g.diagnostics["r2"] > 0.999999 and not g.diagnostics["at_bound"]


def test_increment_fit_with_noise_predicts_curve_and_turning_point():
    rng = np.random.default_rng(1)
    T = np.geomspace(0.5, 100, 60)
    gen = cmr.PowerFit.from_params(GEN_TRUE, (("a2", "s2"), ("a3", "s3")), "b2")
    y = gen.predict(T) + rng.normal(0, 0.001, T.size)
    g = cmr.fit_increment_general(T, y)
    assert np.max(np.abs(g.predict(T) - gen.predict(T))) < 0.002
    flat = {"a1": 0.0, "s1": 1.0, "b1": 0.0}
    t0_true = (0.08 * 0.3 / (0.02 * 0.6)) ** (1 / 0.3)
    t0 = cmr.switch_point(flat, g, math.inf, (0.5, 100))
    assert t0 == pytest.approx(t0_true, rel=0.1)


def test_robust_loss_ignores_an_outlier():
    T = np.geomspace(1, 100, 30)
    dom = cmr.PowerFit.from_params(DOM_TRUE, (("a1", "s1"),), "b1")
    y = dom.predict(T)
    y[10] += 0.3  # a spiking eval
    plain = cmr.fit_increment_domain(T, y)
    robust = cmr.fit_increment_domain(T, y, loss="soft_l1", f_scale=1e-3)
    err_plain = np.max(np.abs(plain.predict(T) - dom.predict(T)))
    err_robust = np.max(np.abs(robust.predict(T) - dom.predict(T)))
    assert err_robust < 0.1 * err_plain


def test_switch_point_analytic_and_edge_cases():
    gen = (0.08, 0.3, -0.02, 0.6, 0.0)
    dom = {"a1": -0.2, "s1": 0.4, "b1": 0.0}
    # lam -> inf: turning point of dL_gen
    t_turn = (0.08 * 0.3 / (0.02 * 0.6)) ** (1 / 0.3)
    assert cmr.switch_point(dom, gen, math.inf, (1, 1000)) == pytest.approx(t_turn, rel=1e-9)
    # finite lam: the domain slope (negative) moves the switch earlier, and the slope vanishes there
    t0 = cmr.switch_point(dom, gen, 100.0, (1, 1000))
    d = cmr.PowerFit.from_params(dom, (("a1", "s1"),), "b1")
    g = cmr.PowerFit.from_params(gen, (("a2", "s2"), ("a3", "s3")), "b2")
    assert t0 < t_turn
    assert d.derivative(t0) + 100.0 * g.derivative(t0) == pytest.approx(0.0, abs=1e-12)
    assert d.derivative(0.99 * t0) + 100.0 * g.derivative(0.99 * t0) > 0
    # no root before the end of the range -> None; already falling at the start -> the start
    assert cmr.switch_point(dom, gen, math.inf, (1, 0.5 * t_turn)) is None
    assert cmr.switch_point(dom, gen, math.inf, (2 * t_turn, 10 * t_turn)) == 2 * t_turn
    with pytest.raises(ValueError, match="lam"):
        cmr.switch_point(dom, gen, 0.0, (1, 10))
    with pytest.raises(ValueError, match="gen_params"):
        cmr.switch_point(dom, {"a2": 1.0}, 10.0, (1, 10))


# ---------------------------------------------------------------------------------------------------
# CMR on a synthetic setup with an analytic answer
# ---------------------------------------------------------------------------------------------------
# Per ratio R the laws have fixed exponents and amplitudes linear in R, so every fitted curve (and its
# slope) is linear in R and both feasibility conditions are linear in R at T_max: the CMR is a closed form.

S1, S2, S3 = 0.4, 0.3, 0.6
RATIOS = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
T_GRID = np.linspace(1.0, 30.0, 30)


def _gen_amps(R):
    return 0.1 * R, -(0.005 * R + 0.01)


def _curves(R, T, offset=0.0):
    a2, a3 = _gen_amps(R)
    return a2 * T**S2 + a3 * T**S3 + offset, -(0.2 * R + 0.02) * T**S1


def _analytic_cmr(T_max, lam, eps, offset=0.0):
    def slope(R):
        a2, a3 = _gen_amps(R)
        gd = a2 * S2 * T_max ** (S2 - 1) + a3 * S3 * T_max ** (S3 - 1)
        dd = -(0.2 * R + 0.02) * S1 * T_max ** (S1 - 1)
        return gd if math.isinf(lam) else gd + dd / lam

    def tol(R):
        return _curves(R, T_max, offset)[0] - eps

    r_switch = -slope(0.0) / (slope(1.0) - slope(0.0))
    r_tol = -tol(0.0) / (tol(1.0) - tol(0.0))
    return min(r_switch, r_tol), ("switch_point" if r_switch < r_tol else "tolerance")


def _increments(offset=0.0):
    G = np.stack([_curves(r, T_GRID, offset)[0] for r in RATIOS])
    D = np.stack([_curves(r, T_GRID)[1] for r in RATIOS])
    return G, D


@pytest.mark.parametrize("interp", ["curves", "params"])
@pytest.mark.parametrize("lam", [math.inf, 100.0])
@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_cmr_matches_analytic(interp, lam, eps):
    G, D = _increments()
    res = cmr.critical_mixture_ratio(RATIOS, T_GRID, G, D, eps=eps, lam=lam, T_max=30.0, interp=interp)
    expected, binding = _analytic_cmr(30.0, lam, eps)
    assert res.status == "ok"
    assert res.cmr == pytest.approx(expected, abs=1e-6)
    assert not np.any(np.isclose(res.cmr, RATIOS, atol=1e-3))  # found between trained ratios
    assert res.binding == binding
    assert res.feasible_intervals[-1][1] == res.cmr
    # the per-ratio records agree with the definition
    for rec in res.per_ratio:
        assert rec["feasible"] == (rec["ratio"] <= res.cmr)
    json.dumps(res.to_dict(), allow_nan=False)


def test_cmr_ragged_per_ratio_grids_and_missing_points():
    G, D = _increments()
    Ts = [T_GRID if i % 2 else T_GRID[::2] for i in range(RATIOS.size)]
    Gs = [G[i] if i % 2 else G[i][::2] for i in range(RATIOS.size)]
    Ds = [D[i] if i % 2 else D[i][::2] for i in range(RATIOS.size)]
    Gs[1] = Gs[1].copy()
    Gs[1][4] = np.nan  # a missing eval is skipped, not fitted
    res = cmr.critical_mixture_ratio(RATIOS, Ts, Gs, Ds, eps=0.2, lam=math.inf)
    assert res.T_max == 29.0  # largest T common to every ratio
    assert res.cmr == pytest.approx(_analytic_cmr(29.0, math.inf, 0.2)[0], abs=1e-6)


def test_cmr_no_feasible_ratio_is_reported_not_garbage():
    G, D = _increments(offset=0.2)  # general loss 0.2 nats worse for every ratio
    res = cmr.critical_mixture_ratio(RATIOS, T_GRID, G, D, eps=0.05, lam=math.inf, T_max=30.0)
    assert res.cmr is None
    assert res.status == "no_feasible_ratio"
    assert res.feasible_intervals == []
    assert "no feasible ratio" in res.message and "eps=0.05" in res.message
    assert not any(rec["feasible"] for rec in res.per_ratio)
    assert res.to_dict()["cmr"] is None


def test_cmr_at_upper_bound_when_every_ratio_is_feasible():
    G, D = _increments(offset=-0.5)
    res = cmr.critical_mixture_ratio(RATIOS[:3], T_GRID, G[:3], D[:3], eps=0.05, lam=math.inf, T_max=30.0)
    assert res.status == "at_upper_bound"
    assert res.cmr == pytest.approx(0.5)
    assert "no extrapolation" in res.message


def test_cmr_feasibility_from_general_loss_vs_ratio_fit():
    G, D = _increments()
    L_gen0 = 3.0
    # L_gen(R, T_max) = L_gen0 + 0.25 * R^1 - 0.05  ->  A = {R <= 0.4} at eps = 0.05
    gvr = {"a": 0.25, "s": 1.0, "b": L_gen0 - 0.05}
    res = cmr.critical_mixture_ratio(
        RATIOS, T_GRID, G, D, eps=0.05, lam=math.inf, T_max=30.0, gen_vs_ratio=gvr, L_gen0=L_gen0
    )
    assert res.cmr == pytest.approx(0.4, abs=1e-8)
    assert res.binding == "tolerance" and res.feasibility_from == "L_gen(R) fit"
    with pytest.raises(ValueError, match="L_gen0"):
        cmr.critical_mixture_ratio(RATIOS, T_GRID, G, D, gen_vs_ratio=gvr)


def test_cmr_input_errors_name_the_problem():
    G, D = _increments()
    with pytest.raises(ValueError, match="at least 2"):
        cmr.critical_mixture_ratio([0.5], T_GRID, G[:1], D[:1], T_max=30.0)
    with pytest.raises(ValueError, match=r"ratio\[1\] = 1.5"):
        cmr.critical_mixture_ratio([0.1, 1.5, 0.5, 0.7, 0.9], T_GRID, G, D, T_max=30.0)
    with pytest.raises(ValueError, match="dL_gen has 3 rows for 5 ratios"):
        cmr.critical_mixture_ratio(RATIOS, T_GRID, G[:3], D, T_max=30.0)
    with pytest.raises(cmr.FitError, match="ratio 0.1: 3 distinct x values, need at least 5"):
        cmr.critical_mixture_ratio(RATIOS, T_GRID, G, D, T_max=3.5)  # 3 points < 5 parameters
    with pytest.raises(cmr.FitError, match=r"y\[2\] = inf"):
        cmr.fit_increment_domain([1, 2, 3, 4], [0.1, 0.2, np.inf, 0.3])
    with pytest.raises(cmr.FitError, match="must be > 0"):
        cmr.fit_increment_domain([0, 1, 2, 3], [0.0, 0.1, 0.2, 0.3])
    with pytest.raises(cmr.FitError, match="need at least 5"):
        cmr.fit_increment_general([1, 2, 3, 4], [0.1, 0.2, 0.1, 0.0])
    with pytest.raises(ValueError, match="T must be finite and > 0"):
        cmr.cmr_scaling_law(cmr.PAPER_CMR_LAWS["460M"], -1.0)
    with pytest.raises(ValueError, match="need 3 parameters"):
        cmr.cmr_scaling_law((1.0, 2.0), 100.0)


# ---------------------------------------------------------------------------------------------------
# Whole analysis from a curves table
# ---------------------------------------------------------------------------------------------------

T_UNIT = 1e6  # tokens per T unit in the synthetic table
BRANCH_TOKENS = 5e7


def _curves_table(noise=0.0, seeds=(0,), offset=0.0, rng=None):
    rows = []
    Tfull = np.r_[0.0, T_GRID]
    for r in RATIOS:
        for seed in seeds:
            g, d = _curves(r, Tfull, offset)
            if noise:
                g = g + rng.normal(0, noise, g.size)
                d = d + rng.normal(0, noise, d.size)
                g[0] = d[0] = 0.0  # the branch point is the same PT checkpoint
            for t, gv, dv in zip(Tfull, g, d):
                common = dict(run_id=f"cpt-r{r:g}-s{seed}", phase="cpt", ratio=r, tokens=BRANCH_TOKENS + t * T_UNIT)
                rows.append({**common, "split": "general", "loss": 3.0 + gv})
                rows.append({**common, "split": "code", "loss": 2.5 + dv})
                rows.append({**common, "split": "train", "loss": 2.4 + dv})
    # PT rows of the same table are ignored (phase filter)
    rows.append(dict(run_id="pt", phase="pt", ratio=0.0, tokens=0.0, split="general", loss=10.0))
    return pd.DataFrame(rows)


def test_cmr_from_curves_matches_analytic_and_budgets():
    df = _curves_table()
    out = cmr.cmr_from_curves(df, domain_split="code", t_unit=T_UNIT, eps=0.2, lam=math.inf, n_prefix=4)
    json.dumps(out, allow_nan=False)
    assert out["settings"]["lam"] == "inf" and out["settings"]["T_max"] == 30.0
    assert out["baselines"]["cpt-r0.5-s0"] == {"general": 3.0, "code": 2.5}
    expected, _ = _analytic_cmr(30.0, math.inf, 0.2)
    assert out["cmr"]["cmr"] == pytest.approx(expected, abs=1e-6)
    assert len(out["cmr_vs_tokens"]) == 4
    for rec in out["cmr_vs_tokens"]:
        assert rec["cmr"] == pytest.approx(_analytic_cmr(rec["T_max"], math.inf, 0.2)[0], abs=1e-6)
        assert rec["tokens"] == rec["T_max"] * T_UNIT
    # CMR grows with the budget here; the fitted scaling law reproduces the budgets' CMRs
    cmrs = [rec["cmr"] for rec in out["cmr_vs_tokens"]]
    assert cmrs == sorted(cmrs)
    law = cmr.PowerFit.from_params(out["cmr_law"]["params"], (("a4", "s4"),), "b3")
    for rec in out["cmr_vs_tokens"]:
        assert law.predict(rec["T_max"]) == pytest.approx(rec["cmr"], abs=0.01)
    # L(R) at T_max per split: general increment is linear in R, so L(R) is recovered with s = 1
    lvr = out["loss_vs_ratio"]["general"]["params"]
    assert lvr["s"] == pytest.approx(1.0, abs=1e-6)
    inc = pd.DataFrame(out["tables"]["increments"])
    assert set(inc["split"]) == {"general", "code"}
    assert len(inc) == len(RATIOS) * 2 * (T_GRID.size + 1)
    assert inc.loc[inc["T"] > 0, "fit"].sub(inc.loc[inc["T"] > 0, "dL"]).abs().max() < 1e-8


def test_cmr_from_curves_with_noise_and_seeds_is_close_and_deterministic():
    rng = np.random.default_rng(7)
    df = _curves_table(noise=0.001, seeds=(0, 1), rng=rng)
    kw = dict(domain_split="code", t_unit=T_UNIT, eps=0.2, lam=100.0, n_prefix=0)
    out = cmr.cmr_from_curves(df, **kw)
    expected, _ = _analytic_cmr(30.0, 100.0, 0.2)
    assert out["cmr"]["cmr"] == pytest.approx(expected, abs=0.05)
    assert out["cmr"]["status"] == "ok"
    assert cmr.cmr_from_curves(df, **kw) == out  # same input -> same result
    assert "error" in out["cmr_law"]  # no budgets requested -> no scaling law, said so


def test_cmr_from_curves_ratio_mapping_and_explicit_baseline():
    df = _curves_table().drop(columns=["ratio"])
    runs = {f"cpt-r{r:g}-s0": float(r) for r in RATIOS}
    runs["pt"] = 0.0
    out = cmr.cmr_from_curves(
        df,
        domain_split="code",
        t_unit=T_UNIT,
        eps=0.2,
        lam=math.inf,
        n_prefix=0,
        ratios=runs,
        baseline={"general": 3.0, "code": 2.5},
    )
    assert out["cmr"]["cmr"] == pytest.approx(_analytic_cmr(30.0, math.inf, 0.2)[0], abs=1e-6)
    # a worse explicit general baseline (lower L_gen0) shifts every increment up by 0.1 nats
    out2 = cmr.cmr_from_curves(
        df,
        domain_split="code",
        t_unit=T_UNIT,
        eps=0.2,
        lam=math.inf,
        n_prefix=0,
        ratios=runs,
        baseline={"general": 2.9, "code": 2.5},
    )
    assert out2["cmr"]["cmr"] == pytest.approx(_analytic_cmr(30.0, math.inf, 0.2, offset=0.1)[0], abs=1e-6)


def test_cmr_from_curves_cpt_relative_tokens_without_branch_rows():
    df = _curves_table()
    df = df[(df["phase"] == "cpt") & (df["tokens"] > BRANCH_TOKENS)].assign(
        tokens=lambda d: d["tokens"] - BRANCH_TOKENS
    )
    kw = dict(domain_split="code", t_unit=T_UNIT, eps=0.2, lam=math.inf, n_prefix=0, t_origin="zero")
    out = cmr.cmr_from_curves(df, baseline={"general": 3.0, "code": 2.5}, **kw)
    assert out["cmr"]["cmr"] == pytest.approx(_analytic_cmr(30.0, math.inf, 0.2)[0], abs=1e-6)
    with pytest.raises(ValueError, match="no row at the branch point"):
        cmr.cmr_from_curves(df, **kw)  # baseline from the branch row, but there is none


# Curves from a different family (the replay-style CPT law of laws.md section 3 with the published
# 106M parameters, constant CPT LR, x = S1_cpt): the CMR laws are only approximations here, so this
# checks the whole method (fits, interpolation in R, root-finding) against the true CMR of the generator.
_S1PT = 4.0


def _replay_gen(r, x):
    return 0.490 * ((_S1PT + x) ** -0.497 - _S1PT**-0.497) + 0.366 * (1 - (28 * x + 1) ** -0.189) * (1 - np.exp(-3 * r))


def _replay_dom(r, x):
    return 0.412 * ((_S1PT + x) ** -0.677 - _S1PT**-0.677) - 0.666 * (1 - (5662 * x + 1) ** -0.146) * (
        np.exp(0.693 * r) - 1
    )


def _replay_true_cmr(T_lo, T_max, lam, eps):
    from scipy.optimize import brentq

    x = np.geomspace(T_lo, T_max, 4000)

    def slope(r):  # analytic d/dx of dom / lam + gen
        g = 0.490 * -0.497 * (_S1PT + x) ** -1.497 + 0.366 * 0.189 * 28 * (28 * x + 1) ** -1.189 * (1 - np.exp(-3 * r))
        d = 0.412 * -0.677 * (_S1PT + x) ** -1.677 - 0.666 * 0.146 * 5662 * (5662 * x + 1) ** -1.146 * (
            np.exp(0.693 * r) - 1
        )
        return np.min(d / lam + g)

    r_tol = brentq(lambda r: _replay_gen(r, T_max) - eps, 0.0, 1.0)
    r_sw = brentq(slope, 0.0, 1.0) if slope(1.0) > 0 else 1.0
    return min(r_tol, r_sw)


@pytest.mark.parametrize(
    "eps, tolerance_from, tol",
    [
        (0.05, "increments", 0.03),
        (0.1, "increments", 0.03),
        (0.05, "loss_vs_ratio", 0.04),
        (0.1, "loss_vs_ratio", 0.04),
    ],
)
def test_cmr_from_curves_of_another_law_family_is_close_to_truth(eps, tolerance_from, tol):
    rng = np.random.default_rng(3)
    x = np.r_[0.0, np.geomspace(0.02, 4.0, 40)]
    rows = []
    for r in RATIOS:
        g = 3.2 + _replay_gen(r, x) + np.r_[0.0, rng.normal(0, 0.002, x.size - 1)]
        d = 2.6 + _replay_dom(r, x) + np.r_[0.0, rng.normal(0, 0.002, x.size - 1)]
        for xi, gv, dv in zip(x, g, d):
            rows.append(dict(run_id=f"r{r:g}", ratio=r, tokens=1e8 + xi * 1e7, split="general", loss=gv))
            rows.append(dict(run_id=f"r{r:g}", ratio=r, tokens=1e8 + xi * 1e7, split="med", loss=dv))
    out = cmr.cmr_from_curves(
        pd.DataFrame(rows),
        domain_split="med",
        t_unit=1e7,
        eps=eps,
        lam=1000.0,
        n_prefix=0,
        tolerance_from=tolerance_from,
    )
    truth = _replay_true_cmr(0.02, 4.0, 1000.0, eps)
    assert 0.1 < truth < 0.9
    assert out["cmr"]["status"] == "ok" and out["cmr"]["binding"] == "tolerance"
    assert out["cmr"]["cmr"] == pytest.approx(truth, abs=tol)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: d.drop(columns=["loss"]), r"missing column\(s\) \['loss'\]"),
        (lambda d: d.drop(columns=["ratio"]), r"ratio.*runs.parquet"),
        (
            lambda d: d.assign(loss=d["loss"].where(d.index != 40, np.nan)),
            r"row 40 \(run 'cpt-r0.1-s0'\): column 'loss'",
        ),
        (lambda d: d.assign(loss=d["loss"].where(d.index != 42, -1.0)), r"row 42 .*loss = -1.0 must be > 0"),
        (lambda d: d.assign(ratio=d["ratio"].where(d.index != 3, 1.2)), r"row 3 .*ratio = 1.2"),
        (lambda d: pd.concat([d, d.iloc[[4]]], ignore_index=True), r"duplicate \(tokens, split\)"),
        (
            lambda d: d[~((d["run_id"] == "cpt-r0.5-s0") & (d["split"] == "code"))],
            r"run 'cpt-r0.5-s0' has no rows for split 'code'",
        ),
        (lambda d: d.assign(split=d["split"].replace("code", "math")), r"no rows with split == 'code'"),
        (lambda d: d[d["ratio"] == 0.5], r">= 2 distinct ratios"),
    ],
)
def test_cmr_from_curves_bad_input(mutate, pattern):
    df = mutate(_curves_table())
    with pytest.raises(ValueError, match=pattern):
        cmr.cmr_from_curves(df, domain_split="code", t_unit=T_UNIT, n_prefix=0, source="cv.parquet")
    with pytest.raises(ValueError, match="cv.parquet"):
        cmr.cmr_from_curves(df, domain_split="code", t_unit=T_UNIT, n_prefix=0, source="cv.parquet")


def test_cmr_from_curves_takes_one_settings_object_or_keywords():
    df = _curves_table()
    kw = dict(domain_split="code", t_unit=T_UNIT, eps=0.2, lam=math.inf, n_prefix=0, interp="params")
    by_keywords = cmr.cmr_from_curves(df, **kw)
    assert cmr.cmr_from_curves(df, cmr.CMRSettings(**kw)) == by_keywords
    assert by_keywords["settings"]["interp"] == "params"
    with pytest.raises(TypeError, match="not both"):
        cmr.cmr_from_curves(df, cmr.CMRSettings(**kw), eps=0.1)
    with pytest.raises(TypeError, match="domain_split"):
        cmr.cmr_from_curves(df, t_unit=T_UNIT)
    with pytest.raises(TypeError, match="n_prefixes"):
        cmr.cmr_from_curves(df, domain_split="code", n_prefixes=3)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def test_cli_params(tmp_path, capsys):
    out = tmp_path / "law.json"
    p = ",".join(map(str, cmr.PAPER_CMR_LAWS["3.1B"]))
    # negative values: "--params=a,b,c" or three separate numbers
    assert cli.main(["cmr", f"--params={p}", "--T", "100", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert round(100 * data["points"][0]["cmr"], 1) == 47.8
    assert "47.8 %" in capsys.readouterr().out
    assert cli.main(["cmr", "--params", *p.split(","), "--tokens", "2e10"]) == 0
    assert json.loads(capsys.readouterr().out)["points"][0]["T"] == 100.0
    assert cli.main(["cmr", "--params", "1,2", "--T", "100"]) == 2
    assert "a4,s4,b3" in capsys.readouterr().err


def test_cli_curves(tmp_path, capsys):
    df = _curves_table()
    curves = tmp_path / "curves.csv"
    df.drop(columns=["ratio"]).to_csv(curves, index=False)
    runs = tmp_path / "runs.parquet"
    df.groupby("run_id", as_index=False)["ratio"].first().to_parquet(runs)
    out = tmp_path / "cmr.json"
    table = tmp_path / "inc.parquet"
    args = [
        "cmr",
        str(curves),
        "--ratios",
        str(runs),
        "--domain-split",
        "code",
        "--t-unit",
        "1e6",
        "--eps",
        "0.2",
        "--lam",
        "inf",
        "--n-prefix",
        "0",
        "--out",
        str(out),
        "--table-out",
        str(table),
    ]
    assert cli.main(args) == 0
    data = json.loads(out.read_text())
    assert data["cmr"]["cmr"] == pytest.approx(_analytic_cmr(30.0, math.inf, 0.2)[0], abs=1e-6)
    assert "CMR = " in capsys.readouterr().out
    assert set(pd.read_parquet(table).columns) >= {"run_id", "ratio", "split", "T", "dL", "fit"}
    assert data["tables"] == {"increments": str(table)}
    # malformed input: one line naming the file and the problem, exit 2, nothing written
    bad = tmp_path / "bad.csv"
    df.assign(loss=df["loss"].where(df.index != 7, -2.0)).to_csv(bad, index=False)
    assert cli.main(["cmr", str(bad), "--domain-split", "code", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "row 8" in err and "loss" in err  # data rows count from 1, as in fit
    assert not (tmp_path / "x.json").exists()
    assert cli.main(["cmr", str(curves), "--domain-split", "code"]) == 2
    assert "--ratios" in capsys.readouterr().err
    assert cli.main(["cmr", str(tmp_path / "nope.parquet"), "--domain-split", "code"]) == 2
    assert "not found" in capsys.readouterr().err
