"""Open-model CPT law (laws.md section 3, Sec. 6 / App. G of Wang et al.): parameter recovery from synthetic
curves (S1_pt included), refusal of curves that cannot identify it, the law chooser, and `cptlaws fit` on a
CSV of CPT runs without a PT history."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from cptlaws.cli import main
from cptlaws.errors import FitError, InputError
from cptlaws.fitting import fit_law
from cptlaws.fitting.curves import Curve
from cptlaws.laws import LAWS, choose_law, get_law
from cptlaws.laws.open import check_identified, open_areas
from cptlaws.schedules import lr_array, phase_lrs

PEAK = 2e-4


def spec(kind, **kw):
    out = {"kind": kind, "peak_lr": PEAK, "warmup_steps": 200, **kw}
    if kind != "constant":
        out.setdefault("final_lr", 2e-5)
    return out


# CPT schedules of a loaded model (LR re-warms from 0): three kinds, four lengths
FIT = {
    "cos4k": (spec("cosine"), 4000),
    "cos8k": (spec("cosine"), 8000),
    "wsd8k": (spec("wsd", decay_fraction=0.2), 8000),
    "const6k": (spec("constant"), 6000),
    "wsd12k": (spec("wsd", decay_fraction=0.2), 12000),
}
HELD = {"cos20k": (spec("cosine"), 20000), "wsd20k": (spec("wsd", decay_fraction=0.2), 20000)}
# a general (proxy D_pt) validation set: forgetting bump (B > 0) on a decaying hidden PT curve
TRUE = {"L0": 2.3, "A": 0.3, "alpha": 1.0, "S1_pt": 0.5, "C2": 0.3, "B": 0.2, "E": 20.0, "beta": 1.0}
SIGMA = 3e-4


def make(schedules, params, sigma, rng, law="cpt_open", every=100, **extra):
    """Curves of runs without a PT history whose loss is the law's prediction plus Gaussian noise."""
    law = get_law(law, **({"split_role": extra.pop("split_role")} if "split_role" in extra else {}))
    cs = []
    for name, (s, steps) in schedules.items():
        at = np.arange(every, steps + 1, every)
        cs.append(Curve(name, lr_array(s, steps), at, np.ones(at.size), warmup_steps=200, **extra))
    truth = law.value_jac(np.array([params[n] for n in law.params]), law.features(cs, 0.999))[0]
    out, truths, k = [], [], 0
    for c in cs:
        t = truth[k : k + c.steps.size]
        out.append(dataclasses.replace(c, loss=t + rng.normal(0, sigma, t.size)))
        truths.append(t)
        k += t.size
    return out, truths


def test_registered_with_exact_gradients():
    from test_laws import _gradcheck

    assert {"cpt_open", "replay_open"} <= set(LAWS)
    curves = [
        Curve("a", lr_array(spec("cosine"), 3000), np.arange(100, 3001, 100), np.ones(30), ratio=0.3),
        Curve("b", lr_array(spec("wsd", decay_fraction=0.3), 5000), np.arange(250, 5001, 250), np.ones(20), ratio=0.8),
    ]
    _gradcheck(get_law("cpt_open"), np.array([2.3, 0.3, 1.0, 0.5, 0.3, 0.2, 20.0, 1.0]), curves)
    for role, B, a2 in (("general", 0.3, 2.0), ("domain", -0.5, 1.5)):
        p = np.array([2.3, 0.3, 1.0, 0.5, 0.3, B, 20.0, 1.0, 0.5, a2])
        _gradcheck(get_law("replay_open", split_role=role), p, curves)


def test_areas_rewarm_from_zero_and_ignore_the_pt_part():
    lrs = lr_array(spec("cosine"), 3000)
    s1, s2 = open_areas(lrs, 0.999)
    assert s1[-1] == pytest.approx(lrs.sum())
    # the first update re-warms from LR 0: momentum -eta_1, so S2 goes negative during warm-up
    assert s2[1] == pytest.approx(-lrs[0])
    assert np.all(np.diff(s2[:200]) < 0)
    # a curve with a transfer step: only its CPT part enters, as if the PT had been unknown
    law = get_law("cpt_open")
    pt = phase_lrs(spec("cosine"), 5000, 5000, spec("cosine"), 3000)
    c_pt = Curve("x", pt, np.arange(5000, 8001, 500), np.ones(7), transfer=5000)
    c_open = Curve("x", lrs, np.arange(0, 3001, 500), np.ones(7))
    a, b = law.features([c_pt], 0.999), law.features([c_open], 0.999)
    np.testing.assert_allclose(a["S1_cpt"], b["S1_cpt"], rtol=1e-12)
    np.testing.assert_allclose(a["S2_cpt"], b["S2_cpt"], rtol=1e-12, atol=1e-15)


def test_recovers_parameters_including_s1_pt():
    """Stated tolerance: S1_pt within a factor 1.6, C2 within 2 %, the fitted curve within 0.01 of the
    noiseless truth on runs 1.7x longer than any fitted one (measured here: S1_pt 0.38 for 0.5, 0.0056). The shift term (B, E, beta) is not asserted:
    L(S1_cpt) is one smooth function of S1_cpt (different schedules only add C2*S2_cpt), and B*beta*ln(1+E x)
    trades off with the power law (laws.md, identifiability). Measured over seeds 0-3 with this design: S1_pt
    0.32 / 0.60 / 0.33 / 0.49 (truth 0.5), held-out max error 0.0015-0.0063 (another run order)."""
    rng = np.random.default_rng(1)
    fit_c, _ = make(FIT, TRUE, SIGMA, rng)
    held_c, held_truth = make(HELD, TRUE, SIGMA, rng)
    res = fit_law("cpt_open", fit_c, n_starts=500, seed=0)
    assert res.diagnostics["at_bound"] == []
    assert abs(np.log(res.params["S1_pt"] / TRUE["S1_pt"])) <= np.log(1.6), res.params
    assert res.params["C2"] == pytest.approx(TRUE["C2"], rel=0.02)
    err = max(np.max(np.abs(p - t)) for p, t in zip(res.predict_arrays(held_c), held_truth))
    assert err <= 0.01, err
    info = check_identified(res, fit_c)  # identified: no error
    assert info["se"]["S1_pt"] < 1.0
    assert len(info["profile"]) == 2 and all(pr["delta_chi2"] >= 3.84 for pr in info["profile"]), info["profile"]
    assert set(info["corr_S1_pt"]) == set(get_law("cpt_open").params) - {"S1_pt"}


def test_replay_open_fits_across_ratios():
    """replay_open (Eq. 8 on the open law) recovers C2 and S1_pt from runs at three ratios."""
    true = {**TRUE, "a1": 0.5, "a2": 2.0}
    rng = np.random.default_rng(4)
    sched = {k: FIT[k] for k in ("cos8k", "wsd8k", "const6k")}
    curves = []
    for r in (0.25, 0.5, 1.0):
        cs, _ = make(sched, true, SIGMA, rng, law="replay_open", split_role="general", ratio=r)
        curves += [dataclasses.replace(c, run_id=f"{c.run_id}-r{r}") for c in cs]
    res = fit_law("replay_open", curves, n_starts=300, seed=0, law_options={"split_role": "general"})
    assert res.law_options == {"split_role": "general"}
    assert res.params["C2"] == pytest.approx(true["C2"], rel=0.05)
    assert abs(np.log(res.params["S1_pt"] / true["S1_pt"])) <= np.log(2.0), res.params
    pred = np.concatenate(res.predict_arrays(curves))
    assert np.sqrt(np.mean((pred - np.concatenate([c.loss for c in curves])) ** 2)) < 1.5 * SIGMA


def test_refuses_curves_that_cannot_identify_it():
    rng = np.random.default_rng(0)
    curves, _ = make(FIT, TRUE, SIGMA, rng)
    one = [curves[1]]
    with pytest.raises(FitError, match=r"cannot identify S1_pt from 1 CPT curve\(s\) of one run"):
        fit_law("cpt_open", one)
    # two lengths of one schedule: a constant LR run and its longer twin are one schedule over what is seen
    const = [
        Curve(n, lr_array(spec("constant"), T), np.arange(100, T + 1, 100), np.full(T // 100, 3.0))
        for n, T in (("c4k", 4000), ("c8k", 8000))
    ]
    with pytest.raises(FitError, match=r"follow one CPT LR schedule.*C2 trades off with S1_pt"):
        fit_law("cpt_open", const)
    few = [dataclasses.replace(c, steps=c.steps[:3], loss=c.loss[:3]) for c in curves[:2]]
    with pytest.raises(FitError, match=r"too few CPT points to identify S1_pt: 6 point\(s\)"):
        fit_law("cpt_open", few)
    # PT points of a run with a known PT history are not open-law points
    pt = phase_lrs(spec("cosine"), 5000, 5000, spec("cosine"), 3000)
    mixed = Curve("pt+cpt", pt, np.arange(1000, 8001, 1000), np.full(8, 3.0), transfer=5000)
    with pytest.raises(InputError, match=r"run 'pt\+cpt' has 4 eval point\(s\) before its transfer step 5000"):
        fit_law("cpt_open", [mixed, curves[0]])
    # a hidden PT curve far beyond the CPT range: (S1_pt + x)^-alpha is nearly a straight line in x and S1_pt
    # trades off with A, alpha, L0; the fit runs (S1_pt lands a factor ~10 off, with a small Gauss-Newton
    # standard error), the profile check refuses it and names the parameters that absorb it
    far, _ = make(FIT, {**TRUE, "A": 2.0, "alpha": 0.5, "S1_pt": 100.0}, SIGMA, np.random.default_rng(0))
    res = fit_law("cpt_open", far, n_starts=300, seed=0)
    with pytest.raises(FitError, match=r"S1_pt is not identified by these curves: .*it trades off with .*A"):
        check_identified(res, far)


def test_chooser_picks_the_open_law_for_runs_without_pt():
    rng = np.random.default_rng(0)
    open_c, _ = make(FIT, TRUE, SIGMA, rng)
    assert choose_law(open_c)[0] == "cpt_open"
    assert "no run has a PT history" in choose_law(open_c)[1]
    ratios = [dataclasses.replace(c, ratio=r) for c, r in zip(open_c, (0.25, 0.5, 1.0, 0.5, 0.25))]
    assert choose_law(ratios)[0] == "replay_open"
    one_ratio = [dataclasses.replace(c, ratio=0.5) for c in open_c]
    assert choose_law(one_ratio)[0] == "cpt_open"
    # runs with a PT history keep the CPT laws
    pt = Curve("pt", lr_array(spec("cosine"), 5000), np.arange(100, 5001, 100), np.ones(50))
    lrs = phase_lrs(spec("cosine"), 5000, 4000, spec("cosine"), 3000)
    cpt = Curve("cpt", lrs, np.arange(4100, 7001, 100), np.ones(30), transfer=4000)
    assert choose_law([pt, cpt])[0] == "cpt"
    r_pt, r_a = dataclasses.replace(pt, ratio=0.0), dataclasses.replace(cpt, ratio=0.5)
    r_b = dataclasses.replace(cpt, run_id="cpt2", ratio=1.0)
    assert choose_law([r_pt, r_a, r_b])[0] == "replay"


@pytest.fixture()
def open_inputs(tmp_path):
    import yaml

    rng = np.random.default_rng(1)
    curves, _ = make(FIT, TRUE, SIGMA, rng)
    held, _ = make({"cos16k": (spec("cosine"), 16000)}, TRUE, SIGMA, rng)
    rows = [(c.run_id, int(s), float(v)) for c in curves + held for s, v in zip(c.steps, c.loss)]
    path = tmp_path / "curves.csv"
    pd.DataFrame(rows, columns=["run", "step", "loss"]).to_csv(path, index=False)
    sched = tmp_path / "schedules.yaml"
    runs = {**FIT, "cos16k": (spec("cosine"), 16000)}
    sched.write_text(yaml.safe_dump({"runs": {k: {"schedule": s, "steps": T} for k, (s, T) in runs.items()}}))
    return path, sched


def test_cli_fits_the_open_law_on_runs_without_pt(tmp_path, open_inputs, capsys):
    from cptlaws.io import read_json

    curves, sched = open_inputs
    out = tmp_path / "fit.json"
    args = ["fit", str(curves), "--schedules", str(sched), "--predict-runs", "cos16k", "--starts", "300"]
    assert main(args + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "--law auto: cpt_open (no run has a PT history" in printed
    fit = read_json(out, "fit")
    assert fit["law"] == "cpt_open"
    assert abs(np.log(fit["params"]["S1_pt"] / TRUE["S1_pt"])) <= np.log(1.6)
    assert fit["diagnostics"]["identifiability"]["se"]["S1_pt"] < 1.0
    assert fit["heldout"]["mean"]["mae"] < 0.003
    # one run alone: refused with the reason, exit 2, no fit written
    lone = tmp_path / "lone.json"
    assert main(["fit", str(curves), "--schedules", str(sched), "--fit-runs", "cos8k", "--out", str(lone)]) == 2
    assert "cannot identify S1_pt from 1 CPT curve(s)" in capsys.readouterr().err
    assert not lone.exists()
