"""Open-model form of the CPT law (laws.md section 3, Wang et al. 2505.07796 Sec. 6 / App. G).

For a model whose pre-training history is unknown (a Hugging Face checkpoint): an open general corpus stands
in for D_pt, the PT forward area S1_pt becomes a fitted parameter, and the model is taken as annealed to zero
at the end of PT, so the C1*S2_pt term is dropped and the CPT LR re-warms from 0:

  cpt_open:    L = L0 + A*(S1_pt + S1_cpt)^-alpha - C2*S2_cpt + B*(1 - (1 + E*S1_cpt)^-beta)
  replay_open: Eq. 8 on top of it (``split_role`` general / domain, as ``replay``):
      general: L0 + A*(S1_pt + S1_cpt)^-alpha - C2*S2_cpt*exp(a1*r_pt)  + dL*(1 - exp(-a2*r_cpt))
      domain:  L0 + A*(S1_pt + S1_cpt)^-alpha - C2*S2_cpt*exp(a1*r_cpt) + dL*(exp(a2*r_cpt) - 1)

Areas: only the CPT part of a curve's LR history enters (``lrs[transfer:]``, or all of it for a curve
without a transfer step: the usual case, a CPT run from a loaded model). S1_cpt and S2_cpt are computed on
that part alone, with the LR before the first CPT update taken as 0 (fully annealed), and the CPT warm-up
counted at its real LR whatever ``warmup_as_peak`` says (the re-warm-up is real; it is what lowers S2_cpt).
A curve with a transfer step may be fitted too (e.g. a cptlaws run treated as if its PT were unknown), but
only its points at or after the transfer step.

Identifiability: ``check_curves`` refuses inputs that cannot identify the law before any fit (one curve,
one LR schedule, too few points per schedule), and ``check_identified(fit, curves)`` refuses a fit whose
S1_pt is not determined by the data (at a bound, or a profile-likelihood refit with S1_pt fixed a factor e
away that fits as well at 95 %), naming the parameters it trades off with. ``cptlaws fit`` runs both.
A Gauss-Newton standard error is reported too, but not used to refuse: along the curved (A, alpha, S1_pt)
valley it can be small while S1_pt is off by a factor 10 (seen on synthetic curves).
"""

from __future__ import annotations

import numpy as np

from cptlaws.areas import momentum
from cptlaws.errors import FitError, InputError
from cptlaws.laws.base import Features, Law, safe_pow
from cptlaws.laws.cpt import shift_jac, shift_term
from cptlaws.laws.replay import ReplayLaw

OPEN_LAWS = ("cpt_open", "replay_open")
MIN_SCHEDULES = 2  # distinct CPT LR schedules (over their observed steps)
MIN_POINTS_PER_SCHEDULE = 3
PROFILE_FACTOR = float(np.e)  # S1_pt must be pinned to within this factor ...
CHI2_1_95 = 3.84  # ... at 95 % (profile likelihood, chi-square with 1 degree of freedom)


def cpt_part(c) -> tuple[np.ndarray, np.ndarray]:
    """(CPT LRs, eval steps counted from the start of CPT) of a curve."""
    t0 = int(c.transfer or 0)
    return c.lrs[t0:], c.steps - t0


def open_areas(lrs: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """S1_cpt, S2_cpt (length len(lrs) + 1, indexed by CPT updates done) with the LR before CPT = 0."""
    lrs = np.asarray(lrs, dtype=np.float64)
    s1 = np.zeros(lrs.size + 1)
    np.cumsum(lrs, out=s1[1:])
    s2 = np.zeros(lrs.size + 1)
    np.cumsum(momentum(np.concatenate([[0.0], lrs]), lam)[1:], out=s2[1:])
    return s1, s2


def open_features(curves, lam: float) -> Features:
    s1, s2, idx, ratio = [], [], [], []
    for ci, c in enumerate(curves):
        lrs, steps = cpt_part(c)
        a1, a2 = open_areas(lrs, lam)
        k = np.clip(steps, 0, lrs.size)
        s1.append(a1[k])
        s2.append(a2[k])
        idx.append(np.full(k.size, ci))
        ratio.append(np.full(k.size, np.nan if c.ratio is None else float(c.ratio)))
    cat = lambda v: np.concatenate(v) if v else np.zeros(0)  # noqa: E731
    out = {"S1_cpt": cat(s1), "S2_cpt": cat(s2), "curve": cat(idx), "ratio": cat(ratio)}
    return Features(n=out["S1_cpt"].size, cols=out)


def _schedule_key(c) -> tuple:
    """The observed part of a curve's CPT LR schedule (up to its last eval step), for counting distinct
    schedules: two runs whose observed LRs agree (one a prefix of the other) are one schedule."""
    lrs, steps = cpt_part(c)
    last = int(steps.max()) if steps.size else 0
    return tuple(np.round(lrs[:last], 15))


def distinct_schedules(curves) -> list[list[str]]:
    """Groups of run ids sharing one observed CPT schedule (prefixes merged into the longer one)."""
    keys = sorted(((_schedule_key(c), c.run_id) for c in curves), key=lambda t: -len(t[0]))
    groups: list[tuple[tuple, list[str]]] = []
    for k, run in keys:
        for gk, runs in groups:
            if gk[: len(k)] == k:
                runs.append(run)
                break
        else:
            groups.append((k, [run]))
    return [sorted(set(r)) for _, r in groups]


def require_open_runs(name: str, curves, n_params: int) -> None:
    """Refuse inputs that cannot identify an open-model law (before any fit)."""
    for c in curves:
        if c.transfer is not None:
            pt = int((c.steps < c.transfer).sum())
            if pt:
                raise InputError(
                    f"law '{name}': run '{c.run_id}' has {pt} eval point(s) before its transfer step {c.transfer} "
                    "(its PT phase); the open-model law describes CPT points only: drop them, or fit law 'cpt' "
                    "to runs whose PT history is known"
                )
    if len({c.run_id for c in curves}) < MIN_SCHEDULES:
        raise FitError(
            f"law '{name}': cannot identify S1_pt from {len(curves)} CPT curve(s) of one run: the PT area S1_pt, "
            f"the power law (A, alpha) and the shift term (B, E, beta) trade off along a single curve; give at "
            f"least {MIN_SCHEDULES} CPT runs with different LR schedules or lengths"
        )
    groups = distinct_schedules(curves)
    if len(groups) < MIN_SCHEDULES:
        raise FitError(
            f"law '{name}': cannot identify S1_pt: the runs {groups[0]} follow one CPT LR schedule over the steps "
            f"observed, so S2_cpt moves in lockstep with S1_cpt and C2 trades off with S1_pt, A and alpha; give at "
            f"least {MIN_SCHEDULES} CPT runs with different schedules (e.g. cosine and WSD, or WSD anneals at "
            "different lengths)"
        )
    per = {c.run_id: int(((c.steps - int(c.transfer or 0)) > 0).sum()) for c in curves}
    counts = [sum(per[r] for r in g) for g in groups]
    n_ok = sum(n >= MIN_POINTS_PER_SCHEDULE for n in counts)
    total = sum(per.values())
    if n_ok < MIN_SCHEDULES or total < 2 * n_params:
        raise FitError(
            f"law '{name}': too few CPT points to identify S1_pt: {total} point(s) after the transfer over "
            f"{len(groups)} schedule(s) ({', '.join(map(str, counts))} per schedule); need at least "
            f"{MIN_POINTS_PER_SCHEDULE} on each of {MIN_SCHEDULES} schedules and {2 * n_params} in all"
        )


class CPTOpenLaw(Law):
    name = "cpt_open"
    params = ("L0", "A", "alpha", "S1_pt", "C2", "B", "E", "beta")
    log_params = frozenset({"A", "alpha", "S1_pt", "C2", "E", "beta"})
    description = "open-model CPT law (Sec. 6 / App. G): S1_pt fitted, no C1*S2_pt term, CPT LR re-warms from 0"

    def check_curves(self, curves):
        require_open_runs(self.name, curves, len(self.params))

    def features(self, curves, lam, warmup_as_peak=True):
        return open_features(curves, lam)  # CPT warm-up counted at its real LR (module doc)

    own_bounds = {"alpha": (1e-4, 10.0), "S1_pt": (1e-6, 1e6), "beta": (1e-4, 20.0)}
    own_starts = {"S1_pt": (1e-3, 1e2)}

    def predict(self, P, F: Features):
        x = F["S1_cpt"]
        with np.errstate(over="ignore", invalid="ignore"):
            return (
                P["L0"]
                + P["A"] * safe_pow(P["S1_pt"] + x, -P["alpha"])
                - P["C2"] * F["S2_cpt"]
                + shift_term(P["B"], P["E"], P["beta"], x)[0]
            )

    def value_jac(self, p, F: Features):
        L0, A, alpha, S1_pt, C2, B, E, beta = p
        x = F["S1_cpt"]
        s1 = S1_pt + x
        s = np.power(s1, -alpha)
        sh, u, ub = shift_term(B, E, beta, x)
        pred = L0 + A * s - C2 * F["S2_cpt"] + sh
        J = np.empty((F.n, 8))
        J[:, 0] = 1.0
        J[:, 1] = s
        J[:, 2] = -A * s * np.log(s1)
        J[:, 3] = -A * alpha * s / s1
        J[:, 4] = -F["S2_cpt"]
        J[:, 5], J[:, 6], J[:, 7] = shift_jac(B, E, beta, x, u, ub)
        return pred, J


class ReplayOpenLaw(ReplayLaw):
    """Eq. 8 (``replay``) on the open-model law: S1_pt fitted, no C1*S2_pt term."""

    name = "replay_open"
    params = ("L0", "A", "alpha", "S1_pt", "C2", "B", "E", "beta", "a1", "a2")
    log_params = frozenset({"A", "alpha", "S1_pt", "C2", "E", "beta", "a2"})
    description = "open-model CPT law with replay ratio (Eq. 8 as written): S1_pt fitted, no C1*S2_pt term"
    warm_law = "cpt_open"
    own_bounds = CPTOpenLaw.own_bounds
    own_starts = CPTOpenLaw.own_starts

    def check_curves(self, curves):
        for c in curves:
            if c.ratio is None or not 0.0 <= float(c.ratio) <= 1.0:
                raise InputError(
                    f"law '{self.name}': run '{c.run_id}' needs a replay ratio r_cpt in [0, 1], got {c.ratio!r}"
                )
        require_open_runs(self.name, curves, len(self.params))

    def features(self, curves, lam, warmup_as_peak=True):
        return open_features(curves, lam)

    def _warm_subset(self, curves):
        """(largest ratio, the runs at it): ``cpt_open`` fitted there warm-starts this law (as ``replay``)."""
        top = max(float(c.ratio) for c in curves)
        sub = [c for c in curves if np.isclose(float(c.ratio), top)]
        return None if len(sub) == len(curves) or top <= 0.0 else (top, sub)

    def predict(self, P, F: Features):
        r, x = F["ratio"], F["S1_cpt"]
        with np.errstate(over="ignore", invalid="ignore"):
            sh = shift_term(P["B"], P["E"], P["beta"], x)[0]
            return (
                P["L0"]
                + P["A"] * safe_pow(P["S1_pt"] + x, -P["alpha"])
                - P["C2"] * F["S2_cpt"] * np.exp(P["a1"] * self._factors(r))
                + sh * self._mix(P["a2"], r)[0]
            )

    def value_jac(self, p, F: Features):
        L0, A, alpha, S1_pt, C2, B, E, beta, a1, a2 = p
        r, x = F["ratio"], F["S1_cpt"]
        s1 = S1_pt + x
        s = np.power(s1, -alpha)
        sh, u, ub = shift_term(B, E, beta, x)
        mix, dmix = self._mix(a2, r)
        fr = self._factors(r)
        ea = np.exp(a1 * fr)
        pred = L0 + A * s - C2 * F["S2_cpt"] * ea + sh * mix
        J = np.empty((F.n, 10))
        J[:, 0] = 1.0
        J[:, 1] = s
        J[:, 2] = -A * s * np.log(s1)
        J[:, 3] = -A * alpha * s / s1
        J[:, 4] = -F["S2_cpt"] * ea
        dB, dE, db = shift_jac(B, E, beta, x, u, ub)
        J[:, 5], J[:, 6], J[:, 7] = dB * mix, dE * mix, db * mix
        J[:, 8] = -C2 * F["S2_cpt"] * ea * fr
        J[:, 9] = sh * dmix
        return pred, J


# ------------------------------------------------------------------------------------ after the fit
def identifiability(fit, curves) -> dict:
    """Gauss-Newton standard errors of the fitted parameters (in the space they are fitted in: log for
    positive ones) and the correlations of S1_pt with the others, on the points the fit used."""
    from cptlaws.fitting import select_points

    law = fit.get_law()
    sel, _, _ = select_points(curves, fit.options.get("drop_warmup", True), fit.options.get("drop_first_frac", 0.0))
    F = law.features(sel, fit.lam)
    y = np.concatenate([c.loss for c in sel])
    p = np.array([fit.params[n] for n in law.params])
    with np.errstate(all="ignore"):
        pred, J = law.value_jac(p, F)
    fixed = set(fit.options.get("fixed", {}) or {})
    free = [i for i, n in enumerate(law.params) if n not in fixed]
    names = [law.params[i] for i in free]
    # d log(pred) / d u, u = log(p) for log params
    Ju = J[:, free] / pred[:, None]
    for k, i in enumerate(free):
        if law.params[i] in law.log_params:
            Ju[:, k] *= p[i]
    r = np.log(y) - np.log(pred)
    dof = max(y.size - len(free), 1)
    s2 = float(r @ r) / dof
    # scale columns before inverting (parameters span many orders of magnitude)
    norm = np.linalg.norm(Ju, axis=0)
    norm[norm == 0] = 1.0
    Jn = Ju / norm
    cov = np.linalg.pinv(Jn.T @ Jn, rcond=1e-14) / np.outer(norm, norm) * s2
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(se, se)
    out = {"se": dict(zip(names, map(float, se))), "residual_sd": float(np.sqrt(s2)), "corr_S1_pt": {}}
    if "S1_pt" in names:
        k = names.index("S1_pt")
        out["corr_S1_pt"] = {n: float(corr[k, j]) for j, n in enumerate(names) if j != k}
    return out


def _ssr(fit, sel, params) -> float:
    """Sum of squared log residuals of ``params`` on the (already selected) curves."""
    law = fit.get_law()
    F = law.features(sel, fit.lam)
    y = np.concatenate([c.loss for c in sel])
    with np.errstate(all="ignore"):
        pred = np.asarray(law.predict({k: np.float64(v) for k, v in params.items()}, F), float)
    r = np.log(y) - np.log(pred)
    return float(r @ r) if np.all(np.isfinite(r)) else float("inf")


def profile_s1_pt(fit, curves, factor: float = PROFILE_FACTOR, n_starts: int = 200) -> list[dict]:
    """Refit with S1_pt fixed at S1_pt / factor and S1_pt * factor (the other parameters free, lambda at the
    fit's): the increase of the squared log residuals over their per-point variance at the best fit is a
    chi-square with one degree of freedom when S1_pt is determined by the data (profile likelihood)."""
    from cptlaws.fitting import fit_law, select_points

    opts = fit.options
    sel, _, _ = select_points(curves, opts.get("drop_warmup", True), opts.get("drop_first_frac", 0.0))
    n = sum(c.steps.size for c in sel)
    k = len(fit.params) - len(opts.get("fixed", {}) or {})
    best = _ssr(fit, sel, fit.params)
    var = best / max(n - k, 1)
    out = []
    for v in (fit.params["S1_pt"] / factor, fit.params["S1_pt"] * factor):
        try:
            res = fit_law(
                fit.law,
                curves,
                n_starts=n_starts,
                lam=fit.lam,
                huber_delta=opts.get("huber_delta", 1e-3),
                drop_warmup=opts.get("drop_warmup", True),
                drop_first_frac=opts.get("drop_first_frac", 0.0),
                seed=int(opts.get("seed", 0)),
                fixed={**(opts.get("fixed", {}) or {}), "S1_pt": float(v)},
                law_options=fit.law_options,
                warm_start=False,
            )
        except FitError:
            continue
        moved = {
            name: float(res.params[name])
            for name in fit.params
            if name != "S1_pt" and not np.isclose(res.params[name], fit.params[name], rtol=0.05, atol=1e-3)
        }
        out.append({"S1_pt": float(v), "delta_chi2": (_ssr(fit, sel, res.params) - best) / var, "moved": moved})
    return out


def check_identified(fit, curves, factor: float = PROFILE_FACTOR) -> dict:
    """Refuse (FitError) an open-model fit whose S1_pt the data do not determine: S1_pt at a bound, or a
    refit with S1_pt fixed a ``factor`` away fitting about as well (profile chi-square under
    ``CHI2_1_95``). Returns ``identifiability`` plus the profile."""
    info = identifiability(fit, curves)
    if "S1_pt" not in info["se"]:
        return info
    s1 = fit.params["S1_pt"]
    partner, rho = max(info["corr_S1_pt"].items(), key=lambda kv: abs(kv[1]) if np.isfinite(kv[1]) else -1.0)
    fix = (
        "the curves determine only L(S1_cpt) over the S1_cpt range they cover (plus C2 from the differences "
        "between schedules): give longer CPT runs (S1_cpt reaching past S1_pt), more points early in CPT or "
        "less noisy evals"
    )
    if "S1_pt" in fit.diagnostics.get("at_bound", []):
        raise FitError(
            f"law '{fit.law}': S1_pt is not identified by these curves: the fit put it at a bound ({s1:.4g}), "
            f"trading off with {partner} (correlation {rho:+.3f}); {fix}"
        )
    info["profile"] = profile_s1_pt(fit, curves, factor)
    for pr in info["profile"]:
        if not pr["delta_chi2"] >= CHI2_1_95:
            moved = ", ".join(f"{k} {fit.params[k]:.4g} -> {v:.4g}" for k, v in pr["moved"].items()) or "none"
            raise FitError(
                f"law '{fit.law}': S1_pt is not identified by these curves: S1_pt = {s1:.4g} fits, but so does "
                f"S1_pt = {pr['S1_pt']:.4g} (a factor {factor:.3g} away; profile chi-square {pr['delta_chi2']:.3g} "
                f"< {CHI2_1_95}): it trades off with {', '.join(pr['moved']) or partner} ({moved}); {fix}"
            )
    return info
