"""Law interface shared by every law in this package.

A law maps a parameter vector and precomputed per-point features (areas at the eval steps, ratios,
model sizes) to predicted losses. Two entry points are used by the fitter:

* ``predict(P, F)`` with ``P`` a dict name -> array; arrays of shape ``(S, 1)`` evaluate ``S``
  parameter sets at once (vectorised multi-start screening) and return ``(S, n)``.
* ``value_jac(p, F)`` with ``p`` a 1-D vector in ``params`` order, returning predictions ``(n,)`` and
  the exact Jacobian ``(n, n_params)``.

Parameters listed in ``log_params`` are strictly positive and fitted in log space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cptlaws.areas import compute_areas


@dataclass
class Features:
    """Per-point inputs of a law, concatenated over curves (``n`` points)."""

    n: int
    cols: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.cols[key]


# Bounds and start ranges (natural units) of the parameters the area laws share: A*S1^-alpha, the annealing
# terms C*S2, the CPT shift B*(1-(1+E*S1_cpt)^-beta) and Eq. 8's mixing factor (a1, a2).
SHARED_BOUNDS = {
    "A": (1e-6, 1e4),
    "alpha": (1e-4, 5.0),
    "C1": (1e-8, 1e4),
    "C2": (1e-8, 1e4),
    "B": (-20.0, 20.0),
    "E": (1e-4, 1e7),
    "beta": (1e-4, 10.0),
    "a1": (-20.0, 20.0),
    "a2": (1e-4, 50.0),
}
SHARED_STARTS = {
    "A": (0.05, 5.0),
    "alpha": (0.05, 1.5),
    "C1": (0.01, 5.0),
    "C2": (0.01, 5.0),
    "B": (-1.5, 1.5),
    "E": (0.1, 1e4),
    "beta": (0.02, 2.0),
    "a1": (-3.0, 3.0),
    "a2": (0.05, 10.0),
}


class Law:
    name: str = ""
    params: tuple[str, ...] = ()
    log_params: frozenset = frozenset()
    uses_lambda: bool = True
    description: str = ""
    # (maxiter, keep): two-stage L-BFGS-B refinement in the fitter (short runs from every refined start,
    # then only the ``keep`` best continue to convergence); None = every start runs to convergence
    refine_screen: tuple[int, int] | None = None

    # a law states only where its parameters differ from SHARED_BOUNDS / SHARED_STARTS
    own_bounds: dict[str, tuple[float, float]] = {}
    own_starts: dict[str, tuple[float, float]] = {}
    l0_start: float = 0.5  # L0 starts in [l0_start * min(y), min(y)]

    # ---- parameter space -------------------------------------------------------------------------
    def bounds(self, y: np.ndarray) -> dict[str, tuple[float, float]]:
        """Hard bounds (natural units) given the observed losses ``y``: L0 in [0, max y]."""
        table = {**SHARED_BOUNDS, **self.own_bounds, "L0": (0.0, float(np.max(y)))}
        return {p: table[p] for p in self.params}

    def start_box(self, y: np.ndarray) -> dict[str, tuple[float, float]]:
        """Range the start grid is drawn from (natural units; log-uniform for log params)."""
        lo = float(np.min(y))
        table = {**SHARED_STARTS, **self.own_starts, "L0": (self.l0_start * lo, lo)}
        return {p: table[p] for p in self.params}

    # ---- features / model --------------------------------------------------------------------------
    def features(self, curves, lam: float, warmup_as_peak: bool = True) -> Features:
        return area_features(curves, lam, warmup_as_peak)

    def predict(self, P: dict[str, np.ndarray], F: Features) -> np.ndarray:
        raise NotImplementedError

    def value_jac(self, p: np.ndarray, F: Features) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def snap_start(self, name: str, values: np.ndarray) -> np.ndarray:
        """Hook to move start values (transformed space) onto a grid that makes screening cheaper."""
        return values

    def options(self) -> dict:
        """Constructor options, stored with a fit so ``get_law(name, **options)`` rebuilds the law."""
        return {}

    def warm_starts(self, curves, fit) -> list[dict]:
        """Extra starts (full parameter dicts) from a nested, better-conditioned law; ``fit(name, curves)``
        fits that law and returns its FitResult. Default: none."""
        return []

    def check_curves(self, curves) -> None:
        """Raise ValueError when a curve lacks an input this law needs (ratio, N, ...)."""

    def __repr__(self) -> str:
        return f"<law {self.name}: {', '.join(self.params)}>"


def area_features(curves, lam: float, warmup_as_peak: bool = True) -> Features:
    """Areas at every eval step of every curve, plus per-point ratio / N / curve index."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("S1", "S2", "S1_pt", "S1_cpt", "S2_pt", "S2_cpt")}
    idx, ratio, npar = [], [], []
    for ci, c in enumerate(curves):
        a = compute_areas(c.lrs, lam, c.transfer, c.warmup_steps, warmup_as_peak).at(c.steps)
        for k in cols:
            cols[k].append(getattr(a, k))
        m = len(c.steps)
        idx.append(np.full(m, ci))
        ratio.append(np.full(m, np.nan if c.ratio is None else float(c.ratio)))
        npar.append(np.full(m, np.nan if c.n_params is None else float(c.n_params)))
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    out["curve"] = np.concatenate(idx) if idx else np.zeros(0, dtype=int)
    out["ratio"] = np.concatenate(ratio) if ratio else np.zeros(0)
    out["N"] = np.concatenate(npar) if npar else np.zeros(0)
    return Features(n=len(out["S1"]), cols=out)


def safe_pow(x: np.ndarray, e) -> np.ndarray:
    """x**e for x > 0; +inf elsewhere so a bad start is screened out rather than crashing."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(x > 0, np.power(np.where(x > 0, x, 1.0), e), np.inf)
