"""Schedule grammar (schedules.py) and S1/S2 areas (areas.py)."""

import numpy as np
import pytest

from cptlaws.areas import compute_areas, effective_lrs
from cptlaws.errors import ScheduleError
from cptlaws.schedules import lr_array, phase_lrs, validate

PEAK, FINAL = 3e-4, 3e-5


def test_constant_with_warmup():
    lrs = lr_array({"kind": "constant", "peak_lr": PEAK, "warmup_steps": 10}, 100)
    assert lrs.shape == (100,)
    np.testing.assert_allclose(lrs[:10], PEAK * np.arange(1, 11) / 10)
    assert np.all(lrs[9:] == PEAK)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decays_end_at_final(kind):
    lrs = lr_array({"kind": kind, "peak_lr": PEAK, "warmup_steps": 10, "final_lr": FINAL}, 110)
    assert lrs[9] == pytest.approx(PEAK)
    assert lrs[-1] == pytest.approx(FINAL)
    assert np.all(np.diff(lrs[10:]) < 0)
    mid = lrs[59]  # halfway through the 100 decay steps
    assert mid == pytest.approx(FINAL + 0.5 * (PEAK - FINAL), rel=1e-12)


@pytest.mark.parametrize("shape", ["exponential", "linear", "cosine"])
def test_wsd_shapes(shape):
    spec = {
        "kind": "wsd",
        "peak_lr": PEAK,
        "warmup_steps": 5,
        "final_lr": FINAL,
        "decay_start": 80,
        "decay_shape": shape,
    }
    lrs = lr_array(spec, 100)
    assert np.all(lrs[5:80] == PEAK)
    assert lrs[-1] == pytest.approx(FINAL)
    if shape == "exponential":  # geometric: constant ratio between steps
        r = lrs[81:] / lrs[80:-1]
        np.testing.assert_allclose(r, r[0])
    if shape == "linear":
        np.testing.assert_allclose(np.diff(lrs[80:]), np.diff(lrs[80:])[0])


def test_wsd_decay_fraction_equals_decay_start():
    a = lr_array({"kind": "wsd", "peak_lr": PEAK, "final_lr": FINAL, "decay_fraction": 0.2}, 1000)
    b = lr_array({"kind": "wsd", "peak_lr": PEAK, "final_lr": FINAL, "decay_start": 800}, 1000)
    np.testing.assert_array_equal(a, b)


def test_multistep():
    lrs = lr_array(
        {
            "kind": "multistep",
            "peak_lr": PEAK,
            "warmup_steps": 4,
            "stages": [{"start": 50, "lr": 1e-4}, {"start": 80, "lr": FINAL}],
        },
        100,
    )
    assert np.all(lrs[4:50] == PEAK) and np.all(lrs[50:80] == 1e-4) and np.all(lrs[80:] == FINAL)


def test_cpt_rewarmup_from_pt_end_and_from_zero():
    pt = {"kind": "cosine", "peak_lr": 2e-4, "warmup_steps": 10, "final_lr": 2e-5}
    cpt = {"kind": "cosine", "peak_lr": 2e-4, "warmup_steps": 20, "warmup_init": "pt_end", "final_lr": 2e-5}
    h = phase_lrs(pt, 200, 150, cpt, 100)
    assert h.shape == (250,)
    np.testing.assert_array_equal(h[:150], lr_array(pt, 200)[:150])
    end = h[149]
    assert h[150] == pytest.approx(end + (2e-4 - end) / 20)  # re-warm-up starts at the PT end LR
    assert h[169] == pytest.approx(2e-4)
    z = phase_lrs(pt, 200, 150, {**cpt, "warmup_init": 0.0}, 100)
    assert z[150] == pytest.approx(2e-4 / 20)
    # no re-warm-up: continue at the PT end LR
    c = phase_lrs(pt, 200, 150, {"kind": "constant", "peak_lr": "pt_end"}, 50)
    assert np.all(c[150:] == end)


@pytest.mark.parametrize(
    "spec, steps, field",
    [
        ({"kind": "triangle", "peak_lr": PEAK}, 10, "kind"),
        ({"kind": "wsd", "peak_lr": PEAK, "final_lr": FINAL, "decay_start": 200}, 100, "decay_start"),
        ({"kind": "constant", "peak_lr": -1e-4}, 10, "peak_lr"),
        ({"kind": "cosine", "peak_lr": PEAK, "final_lr": -1e-5}, 10, "final_lr"),
        ({"kind": "constant", "peak_lr": PEAK, "warmup_steps": 50}, 10, "warmup_steps"),
        ({"kind": "cosine", "peak_lr": PEAK}, 10, "final_lr"),
        ({"kind": "constant", "peak_lr": PEAK, "colour": 1}, 10, "colour"),
        (
            {"kind": "wsd", "peak_lr": PEAK, "final_lr": FINAL, "decay_start": 5, "decay_shape": "step"},
            10,
            "decay_shape",
        ),
        ({"kind": "multistep", "peak_lr": PEAK, "stages": [{"start": 20, "lr": 1e-4}]}, 10, "stages[0].start"),
        ({"kind": "constant", "peak_lr": "1e-4"}, 10, "peak_lr"),
    ],
)
def test_invalid_specs_name_the_field(spec, steps, field):
    with pytest.raises(ScheduleError, match=f"'{field}'" if "[" not in field else r"stages\[0\]"):
        lr_array(spec, steps)


def test_pt_end_needs_a_pt_phase():
    with pytest.raises(ScheduleError, match="peak_lr"):
        lr_array({"kind": "constant", "peak_lr": "pt_end"}, 10)


def _naive_areas(lrs, lam, transfer):
    m, s2, s1 = 0.0, 0.0, 0.0
    S1, S2 = [0.0], [0.0]
    for i in range(len(lrs)):
        prev = lrs[i - 1] if i > 0 else lrs[0]
        m = lam * m + (prev - lrs[i])
        s1 += lrs[i]
        s2 += m
        S1.append(s1)
        S2.append(s2)
    S1, S2 = np.array(S1), np.array(S2)
    T = transfer
    return S1, S2, np.minimum(S1, S1[T]), S1 - np.minimum(S1, S1[T]), np.where(np.arange(len(S2)) >= T, S2[T], S2)


def test_areas_match_naive_loop_across_transfer():
    pt = {"kind": "wsd", "peak_lr": 2e-4, "warmup_steps": 5, "final_lr": 2e-5, "decay_start": 40}
    cpt = {"kind": "cosine", "peak_lr": 1e-4, "warmup_steps": 8, "warmup_init": "pt_end", "final_lr": 1e-5}
    lrs = phase_lrs(pt, 60, 50, cpt, 30)
    a = compute_areas(lrs, 0.99, transfer=50, warmup_steps=5, warmup_as_peak=False)
    S1, S2, S1_pt, S1_cpt, S2_pt = _naive_areas(list(lrs), 0.99, 50)
    np.testing.assert_allclose(a.S1, S1, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(a.S2, S2, rtol=1e-10, atol=1e-16)
    np.testing.assert_allclose(a.S1_pt, S1_pt, atol=1e-18)
    np.testing.assert_allclose(a.S1_cpt, S1_cpt, atol=1e-16)
    np.testing.assert_allclose(a.S2_pt, S2_pt, atol=1e-16)
    np.testing.assert_allclose(a.S2_cpt, a.S2 - a.S2_pt)
    # the CPT re-warm-up lowers S2 compared with continuing at the PT end LR
    flat = compute_areas(phase_lrs(pt, 60, 50, {"kind": "constant", "peak_lr": "pt_end"}, 30), 0.99, 50, 5, False)
    assert a.S2_cpt[58] < flat.S2_cpt[58] - 1e-4


def test_warmup_counted_at_peak_by_default():
    lrs = lr_array({"kind": "constant", "peak_lr": PEAK, "warmup_steps": 100}, 1000)
    assert np.all(effective_lrs(lrs, 100) == PEAK)
    peak = compute_areas(lrs, warmup_steps=100)
    real = compute_areas(lrs, warmup_steps=100, warmup_as_peak=False)
    assert peak.S1[1000] == pytest.approx(1000 * PEAK)
    assert real.S1[1000] == pytest.approx(900 * PEAK + PEAK * 101 / 2)


def test_million_step_areas_closed_form():
    n = 1_000_000
    lrs = lr_array({"kind": "cosine", "peak_lr": PEAK, "warmup_steps": 1000, "final_lr": FINAL}, n)
    lam = 0.999
    a = compute_areas(lrs, lam, warmup_steps=1000)
    assert a.S1.shape == (n + 1,) and np.all(np.isfinite(a.S2))
    from cptlaws.areas import momentum

    eff = effective_lrs(lrs, 1000)
    m = momentum(eff, lam)
    t = np.array([10, 5000, 500_000, n])
    closed = (eff[0] - eff[t - 1] - lam * m[t - 1]) / (1 - lam)  # laws.md section 1
    np.testing.assert_allclose(a.S2[t], closed, rtol=1e-8, atol=1e-12)
    assert a.S2[n] == pytest.approx((PEAK - FINAL) / (1 - lam), rel=1e-3)


def test_validate_normalises():
    out = validate({"kind": "wsd", "peak_lr": 1, "final_lr": 0.1, "decay_fraction": 0.5})
    assert out["decay_shape"] == "exponential" and out["warmup_steps"] == 0
