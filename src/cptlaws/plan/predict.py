"""Predicted general and domain loss of recipes from fitted CPT laws.

Each recipe becomes a two-point ``Curve`` (the transfer step ``T`` and the end of CPT ``T + steps``) over its
whole LR history (as ``schedules.phase_lrs``: the PT schedule up to ``T``, then the recipe's CPT schedule), and
the fit's own ``FitResult.predict_arrays`` evaluates it, so every law sees the schedule exactly as in its fit
(S1 / S2 split at ``T``, the ratio, N). ΔL = L(T + steps) - L(T): positive = the loss rose during CPT.
"""

from __future__ import annotations

import numpy as np

from cptlaws.errors import InputError
from cptlaws.fitting.curves import Curve
from cptlaws.laws.base import Features
from cptlaws.plan.space import Context, Recipe
from cptlaws.schedules import lr_array

ROLES = ("general", "domain")
CHUNK = 256  # recipes evaluated together


class Predictor:
    """Evaluates recipes under the fits of each role; LR histories are cached per schedule."""

    def __init__(self, fits: dict, ctx: Context):
        self.fits, self.ctx = fits, ctx
        self._hist: dict[tuple, np.ndarray] = {}
        self._feat: dict[tuple, object] = {}

    def history(self, r: Recipe) -> np.ndarray:
        key = self._key(r)
        if key not in self._hist:
            if not 0 < r.transfer <= self.ctx.pt_steps:
                raise InputError(f"transfer step {r.transfer} outside the PT run (1..{self.ctx.pt_steps})")
            # schedules.phase_lrs with the PT part computed once (ctx.pt_lrs)
            pt = self.ctx.pt_lrs[: r.transfer]
            self._hist[key] = np.concatenate([pt, lr_array(r.cpt_schedule(), r.steps, prev_lr=float(pt[-1]))])
        return self._hist[key]

    def curves(self, recipes, split: str) -> list[Curve]:
        return [
            Curve(
                f"plan{i}",
                self.history(r),
                np.array([r.transfer, r.transfer + r.steps]),
                np.ones(2),
                transfer=r.transfer,
                ratio=r.ratio,
                n_params=self.ctx.n_params,
                warmup_steps=self.ctx.pt_warmup,
                split=split,
            )  # fmt: skip
            for i, r in enumerate(recipes)
        ]

    def _pairs(self, role: str, recipes, params=None) -> np.ndarray:
        """(L at T, L at T + steps) of every recipe, shape ``(n, 2)``.

        Recipes that differ only in the ratio share an LR history: the law's features are computed once per
        history and repeated, with each recipe's own ratio (the same numbers ``FitResult.predict_arrays``
        gives per curve, at a fraction of the cost; tested). A law with features beyond the per-point
        columns takes the per-curve path."""
        fit = self.fits[role]
        split = fit.split or role
        keys = [self._key(r) for r in recipes]
        first: dict[tuple, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        uniq = [recipes[i] for i in first.values()]
        law = fit.get_law()
        wap = fit.options.get("warmup_as_peak", True)
        fkey = (type(law).features, fit.lam, wap, tuple(first))  # the two roles' fits usually share it
        if fkey not in self._feat:
            self._feat[fkey] = law.features(self.curves(uniq, split), fit.lam, wap)
        F = self._feat[fkey]
        if F.extra:
            arr = fit.predict_arrays(self.curves(recipes, split), params)
            return np.array(arr, dtype=float).reshape(len(recipes), 2)
        pos = {k: j for j, k in enumerate(first)}
        u = np.array([pos[k] for k in keys], dtype=np.int64)
        idx = np.stack([2 * u, 2 * u + 1], axis=1).ravel()
        cols = {k: v[idx] for k, v in F.cols.items()}
        cols["ratio"] = np.repeat(np.array([r.ratio for r in recipes], float), 2)
        cols["curve"] = np.repeat(np.arange(len(recipes)), 2)
        G = Features(n=idx.size, cols=cols)
        p = params or fit.params
        with np.errstate(all="ignore"):
            pred = np.asarray(law.predict({k: np.float64(v) for k, v in p.items()}, G), float)
        return np.where(np.isfinite(pred), pred, np.nan).reshape(len(recipes), 2)

    @staticmethod
    def _key(r: Recipe) -> tuple:
        return (r.kind, r.peak_lr, r.warmup_steps, r.decay_fraction, r.final_lr_frac, r.steps, r.transfer)

    def _chunks(self, recipes):
        """Recipes in chunks of ``CHUNK``; the LR histories are kept for one chunk only (memory: CHUNK
        histories of the whole PT + CPT length at most)."""
        recipes = list(recipes)
        for a in range(0, len(recipes), CHUNK):
            yield recipes[a : a + CHUNK]
            self._hist.clear()
            self._feat.clear()

    def point(self, recipes) -> dict:
        """``{role: {"L_T", "L_end", "dL"}}`` arrays (one value per recipe) for every fitted role."""
        parts = {role: [] for role in self.fits}
        for chunk in self._chunks(recipes):
            for role in self.fits:
                parts[role].append(self._pairs(role, chunk))
        out = {}
        for role, ps in parts.items():
            p = np.concatenate(ps) if ps else np.zeros((0, 2))
            out[role] = {"L_T": p[:, 0], "L_end": p[:, 1], "dL": p[:, 1] - p[:, 0]}
        return out

    def draws(self, recipes) -> dict:
        """Per role, ``(n_boot, n_recipes, 2)`` predictions under the fit's bootstrap parameters (absent
        roles have no bootstrap)."""
        out = {}
        for role, fit in self.fits.items():
            if fit.bootstrap_params:
                parts = [
                    np.stack([self._pairs(role, chunk, bp) for bp in fit.bootstrap_params])
                    for chunk in self._chunks(recipes)
                ]
                out[role] = np.concatenate(parts, axis=1)
        return out


def interval(samples: np.ndarray, level: float) -> list | None:
    """Central ``level`` quantile interval of finite samples (None when there are none)."""
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if not s.size:
        return None
    q = (1.0 - level) / 2.0
    return [float(np.quantile(s, q)), float(np.quantile(s, 1.0 - q))]
