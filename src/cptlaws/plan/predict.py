"""Predicted general and domain loss of recipes from fitted CPT laws.

Each recipe becomes a two-point ``Curve`` (the transfer step ``T`` and the end of CPT ``T + steps``) over its
whole LR history (``schedules.phase_lrs``: the PT schedule up to ``T``, then the recipe's CPT schedule), and
the fit's own ``FitResult.predict_arrays`` evaluates it, so every law sees the schedule exactly as in its fit
(S1 / S2 split at ``T``, the ratio, N). ΔL = L(T + steps) - L(T): positive = the loss rose during CPT.
"""

from __future__ import annotations

import numpy as np

from cptlaws.errors import InputError
from cptlaws.fitting.curves import Curve
from cptlaws.plan.space import Context, Recipe
from cptlaws.schedules import phase_lrs

ROLES = ("general", "domain")


class Predictor:
    """Evaluates recipes under the fits of each role; LR histories are cached per schedule."""

    def __init__(self, fits: dict, ctx: Context):
        self.fits, self.ctx = fits, ctx
        self._hist: dict[tuple, np.ndarray] = {}

    def history(self, r: Recipe) -> np.ndarray:
        key = (r.kind, r.peak_lr, r.warmup_steps, r.decay_fraction, r.final_lr_frac, r.steps, r.transfer)
        if key not in self._hist:
            if not 0 < r.transfer <= self.ctx.pt_steps:
                raise InputError(f"transfer step {r.transfer} outside the PT run (1..{self.ctx.pt_steps})")
            self._hist[key] = phase_lrs(self.ctx.pt_schedule, self.ctx.pt_steps, r.transfer, r.cpt_schedule(), r.steps)
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
        fit = self.fits[role]
        arr = fit.predict_arrays(self.curves(recipes, fit.split or role), params)
        return np.array(arr, dtype=float).reshape(len(recipes), 2)

    def point(self, recipes) -> dict:
        """``{role: {"L_T", "L_end", "dL"}}`` arrays (one value per recipe) for every fitted role."""
        out = {}
        for role in self.fits:
            p = self._pairs(role, recipes)
            out[role] = {"L_T": p[:, 0], "L_end": p[:, 1], "dL": p[:, 1] - p[:, 0]}
        return out

    def draws(self, recipes) -> dict:
        """Per role, ``(n_boot, n_recipes, 2)`` predictions under the fit's bootstrap parameters (absent
        roles have no bootstrap)."""
        out = {}
        for role, fit in self.fits.items():
            if fit.bootstrap_params:
                out[role] = np.stack([self._pairs(role, recipes, bp) for bp in fit.bootstrap_params])
        return out


def interval(samples: np.ndarray, level: float) -> list | None:
    """Central ``level`` quantile interval of finite samples (None when there are none)."""
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if not s.size:
        return None
    q = (1.0 - level) / 2.0
    return [float(np.quantile(s, q)), float(np.quantile(s, 1.0 - q))]
