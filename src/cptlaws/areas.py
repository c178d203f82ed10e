"""Schedule areas S1 (forward) and S2 (annealing, with momentum lambda), laws.md section 1.

All arrays returned here have length ``steps + 1`` and are indexed by the number of updates done:
``S1[t] = sum(lrs[:t])`` is the area after ``t`` updates (``S1[0] = 0``), so a loss logged at step ``t``
reads its areas at index ``t`` directly.

Momentum across the PT -> CPT transfer: ONE recursion runs over the whole concatenated LR history and
its cumulative sum is split at the transfer step. The momentum built up by a PT anneal therefore keeps
contributing (to S2_cpt) after the transfer, exactly as if the schedule had never been split; this is
our choice (the CPT paper does not say) and it makes the CPT law reduce to the LR-annealing law when
the CPT phase continues the PT schedule on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from cptlaws.errors import ConfigError

DEFAULT_LAMBDA = 0.999


@dataclass(frozen=True)
class Areas:
    S1: np.ndarray
    S2: np.ndarray
    S1_pt: np.ndarray
    S1_cpt: np.ndarray
    S2_pt: np.ndarray
    S2_cpt: np.ndarray

    def at(self, steps) -> Areas:
        """The areas at the given (integer) step indices."""
        idx = np.asarray(steps, dtype=np.int64)
        return Areas(*(getattr(self, f)[idx] for f in ("S1", "S2", "S1_pt", "S1_cpt", "S2_pt", "S2_cpt")))


def effective_lrs(lrs: np.ndarray, warmup_steps: int = 0, warmup_as_peak: bool = True) -> np.ndarray:
    """LRs as the areas see them: with ``warmup_as_peak`` the first ``warmup_steps`` updates count at
    the LR reached at the end of warm-up, as in the LR-annealing reference code (laws.md section 1)."""
    lrs = np.asarray(lrs, dtype=np.float64)
    if warmup_as_peak and warmup_steps > 0:
        w = min(int(warmup_steps), len(lrs))
        lrs = lrs.copy()
        lrs[:w] = lrs[w - 1]
    return lrs


def momentum(lrs: np.ndarray, lam: float = DEFAULT_LAMBDA) -> np.ndarray:
    """m_i = lam * m_{i-1} + (eta_{i-1} - eta_i), m_0 = 0, with eta_0 := eta_1 (no anneal at step 1)."""
    lrs = np.asarray(lrs, dtype=np.float64)
    if lrs.size == 0:
        return lrs.copy()
    d = np.empty_like(lrs)
    d[0] = 0.0
    np.subtract(lrs[:-1], lrs[1:], out=d[1:])
    return lfilter([1.0], [1.0, -lam], d)


def compute_areas(
    lrs: np.ndarray,
    lam: float = DEFAULT_LAMBDA,
    transfer: int | None = None,
    warmup_steps: int = 0,
    warmup_as_peak: bool = True,
) -> Areas:
    """S1/S2 over a whole LR history, split at ``transfer`` (number of PT updates; None = pure PT)."""
    if not 0.0 <= lam < 1.0:
        raise ConfigError(f"lambda = {lam!r} must be in [0, 1)")
    eff = effective_lrs(lrs, warmup_steps, warmup_as_peak)
    n = eff.size
    S1 = np.zeros(n + 1)
    np.cumsum(eff, out=S1[1:])
    S2 = np.zeros(n + 1)
    np.cumsum(momentum(eff, lam), out=S2[1:])
    if transfer is None or transfer >= n:
        zeros = np.zeros(n + 1)
        return Areas(S1, S2, S1, zeros, S2, zeros)
    if transfer < 0:
        raise ConfigError(f"transfer step {transfer} must be >= 0")
    S1_pt = S1.copy()
    S1_pt[transfer:] = S1[transfer]
    S2_pt = S2.copy()
    S2_pt[transfer:] = S2[transfer]
    return Areas(S1, S2, S1_pt, S1 - S1_pt, S2_pt, S2 - S2_pt)
