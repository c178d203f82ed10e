"""The critical-mixture-ratio analysis of Gu et al. (arXiv 2407.17467): loss vs ratio, loss increments
vs tokens, the switch point, the CMR and its scaling law; ``cmr_from_curves`` runs it on a study's curves.

Modules: ``laws`` (the fitted laws and the switch point), ``ratio`` (the CMR from per-ratio fits),
``analysis`` (the whole analysis from a curves table). The power-law fitter is
``cptlaws.fitting.powerlaw``."""

from cptlaws.cmr.analysis import CMRSettings, cmr_from_curves
from cptlaws.cmr.laws import (
    PAPER_CMR_LAWS,
    PAPER_T_UNIT_TOKENS,
    cmr_scaling_law,
    fit_cmr_scaling_law,
    fit_increment_domain,
    fit_increment_general,
    fit_loss_vs_ratio,
    switch_point,
)
from cptlaws.cmr.ratio import CMRResult, critical_mixture_ratio, critical_mixture_ratio_from_fits
from cptlaws.errors import FitError, InputError
from cptlaws.fitting.powerlaw import PowerFit, fit_power_law

__all__ = [
    "PAPER_CMR_LAWS",
    "PAPER_T_UNIT_TOKENS",
    "CMRResult",
    "CMRSettings",
    "FitError",
    "InputError",
    "PowerFit",
    "cmr_from_curves",
    "cmr_scaling_law",
    "critical_mixture_ratio",
    "critical_mixture_ratio_from_fits",
    "fit_cmr_scaling_law",
    "fit_increment_domain",
    "fit_increment_general",
    "fit_loss_vs_ratio",
    "fit_power_law",
    "switch_point",
]
