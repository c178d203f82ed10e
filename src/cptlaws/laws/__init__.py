"""Law registry: ``get_law(name, **options)``.

| name | law | options |
|---|---|---|
| lra | LR-annealing law, Eq. 1 | |
| lra2 | two-timescale LR-annealing law (recommended for schedule prediction) | warmup_rise, s1_power |
| cpt | CPT law, Eq. 4 | |
| replay | CPT law with replay ratio, Eq. 8 as written | split_role = general / domain |
| replay_rpt | Eq. 8 variant (domain annealing factor uses r_pt) | split_role |
| replay_flex | Eq. 8 with one signed, normalised mixing factor (e^(a2 r) - 1)/(e^a2 - 1) for both sets | split_role |
| size | CPT law with model size, Eq. 7 | |
| mpl | multi-power law baseline | block (decrement merging, 1 = exact), warmup_ld |
| mixing | data-mixing law c + k*exp(t*r) | |

The registry names each law's class by module, so listing or checking law names (the CLI's choices, the
study config at Snakemake parse time) imports neither the laws nor scipy.
"""

from __future__ import annotations

import importlib

from cptlaws.errors import ConfigError

# name -> (module under cptlaws.laws, class)
LAWS: dict[str, tuple[str, str]] = {
    "lra": ("lra", "LRALaw"),
    "lra2": ("lra2", "LRA2Law"),
    "cpt": ("cpt", "CPTLaw"),
    "replay": ("replay", "ReplayLaw"),
    "replay_rpt": ("replay", "ReplayRptLaw"),
    "replay_flex": ("replay", "ReplayFlexLaw"),
    "size": ("size", "SizeLaw"),
    "mpl": ("mpl", "MPLLaw"),
    "mixing": ("mixing", "MixingLaw"),
}


def law_class(name: str) -> type:
    """The class of a registered law (imports its module)."""
    try:
        module, cls = LAWS[name]
    except KeyError:
        raise ConfigError(f"unknown law {name!r} (known: {', '.join(sorted(LAWS))})") from None
    return getattr(importlib.import_module(f"cptlaws.laws.{module}"), cls)


def get_law(name, **options):
    """A law instance by registry name; ``options`` go to its constructor (e.g. split_role)."""
    from cptlaws.laws.base import Law

    if isinstance(name, Law):
        return name
    cls = law_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"law {name!r}: bad options {options!r} ({exc})") from None


__all__ = ["LAWS", "get_law", "law_class"]
