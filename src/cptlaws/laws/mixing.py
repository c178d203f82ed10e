"""Data-mixing law (Ye et al. 2403.16952): L(r) = c + k*exp(t*r), r = the curve's mixture ratio."""

from __future__ import annotations

import numpy as np

from cptlaws.errors import InputError
from cptlaws.laws.base import Features, Law


class MixingLaw(Law):
    name = "mixing"
    params = ("c", "k", "t")
    log_params = frozenset()
    uses_lambda = False
    description = "data-mixing law c + k*exp(t*r) over the curves' mixture ratios"

    def check_curves(self, curves):
        for c in curves:
            if c.ratio is None or not np.isfinite(c.ratio):
                raise InputError(f"law 'mixing': run '{c.run_id}' needs a mixture ratio, got {c.ratio!r}")

    def bounds(self, y):
        span = float(np.max(y) - np.min(y)) + 1.0
        return {
            "c": (-10 * float(np.max(y)), 10 * float(np.max(y))),
            "k": (-100 * span, 100 * span),
            "t": (-30.0, 30.0),
        }

    def start_box(self, y):
        lo, hi = float(np.min(y)), float(np.max(y))
        return {"c": (lo - (hi - lo) - 0.1, hi), "k": (-(hi - lo) - 0.1, (hi - lo) + 0.1), "t": (-5.0, 5.0)}

    def predict(self, P, F: Features):
        with np.errstate(over="ignore"):
            return P["c"] + P["k"] * np.exp(P["t"] * F["ratio"])

    def value_jac(self, p, F: Features):
        c, k, t = p
        e = np.exp(t * F["ratio"])
        J = np.empty((F.n, 3))
        J[:, 0] = 1.0
        J[:, 1] = e
        J[:, 2] = k * F["ratio"] * e
        return c + k * e, J
