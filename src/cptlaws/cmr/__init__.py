"""The critical-mixture-ratio analysis of Gu et al. (arXiv 2407.17467): loss vs ratio, loss increments
vs tokens, the switch point, the CMR and its scaling law; ``cmr_from_curves`` runs it on a study's curves."""

from cptlaws.cmr.analysis import (
    PAPER_CMR_LAWS,
    PAPER_T_UNIT_TOKENS,
    CMRResult,
    PowerFit,
    cmr_from_curves,
    cmr_scaling_law,
    critical_mixture_ratio,
    critical_mixture_ratio_from_fits,
    fit_cmr_scaling_law,
    fit_increment_domain,
    fit_increment_general,
    fit_loss_vs_ratio,
    fit_power_law,
    switch_point,
)
from cptlaws.errors import FitError, InputError

__all__ = [
    "PAPER_CMR_LAWS",
    "PAPER_T_UNIT_TOKENS",
    "CMRResult",
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
