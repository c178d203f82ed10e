"""Fitting any law of ``cptlaws.laws`` to loss curves: curve inputs, the multi-start engine, held-out metrics."""

from cptlaws.errors import FitError
from cptlaws.fitting.engine import FitResult, fit_law, select_points

__all__ = ["FitError", "FitResult", "fit_law", "select_points"]
