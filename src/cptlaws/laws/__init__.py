"""Law registry: ``get_law(name, **options)``.

| name | law | options |
|---|---|---|
| lra | LR-annealing law, Eq. 1 | |
| lra2 | two-timescale LR-annealing law (recommended for schedule prediction) | warmup_rise, s1_power |
| cpt | CPT law, Eq. 4 | |
| replay | CPT law with replay ratio, Eq. 8 as written | split_role = general / domain |
| replay_rpt | Eq. 8 variant (domain annealing factor uses r_pt) | split_role |
| replay_flex | Eq. 8 with one signed, normalised mixing factor (e^(a2 r) - 1)/(e^a2 - 1) for both sets | split_role |
| cpt_open | open-model CPT law (Sec. 6 / App. G): S1_pt fitted, no C1*S2_pt term | |
| replay_open | Eq. 8 on the open-model law | split_role |
| size | CPT law with model size, Eq. 7 | |
| mpl | multi-power law baseline | block (decrement merging, 1 = exact), warmup_ld |
| mixing | data-mixing law c + k*exp(t*r) | |

The registry names each law's class by module, so listing or checking law names (the CLI's choices, the
study config at Snakemake parse time) imports neither the laws nor scipy.

``choose_law(curves)`` picks the law for a group of runs when none is named (``cptlaws fit --law auto``):
runs with a PT history (a transfer step) get ``cpt`` / ``replay``, runs without one (CPT of a model whose
PT is unknown) the open-model ``cpt_open`` / ``replay_open``; the replay form when every run has a ratio
and the CPT runs have more than one.
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
    "cpt_open": ("open", "CPTOpenLaw"),
    "replay_open": ("open", "ReplayOpenLaw"),
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


def choose_law(curves) -> tuple[str, str]:
    """(law name, why) for a group of curves (``fitting.curves.Curve``) fitted together; see the module doc."""
    curves = list(curves)
    has_pt = any(c.transfer is not None for c in curves)
    cpt = [c for c in curves if c.transfer is not None] if has_pt else curves
    ratios = {float(c.ratio) for c in cpt if c.ratio is not None}
    replay = len(ratios) > 1 and all(c.ratio is not None for c in curves)
    if has_pt:
        name = "replay" if replay else "cpt"
        why = "runs with a PT history (transfer step)"
    else:
        name = "replay_open" if replay else "cpt_open"
        why = "no run has a PT history (no transfer step): open-model law"
    if replay:
        why += f", {len(ratios)} replay ratios"
    return name, why


__all__ = ["LAWS", "choose_law", "get_law", "law_class"]
