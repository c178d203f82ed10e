"""Law registry: ``get_law(name, **options)``.

| name | law | options |
|---|---|---|
| lra | LR-annealing law, Eq. 1 | |
| lra2 | two-timescale LR-annealing law (recommended for schedule prediction) | |
| cpt | CPT law, Eq. 4 | |
| replay | CPT law with replay ratio, Eq. 8 as written | split_role = general / domain |
| replay_rpt | Eq. 8 variant (domain annealing factor uses r_pt) | split_role |
| replay_flex | Eq. 8 with one signed, normalised mixing factor (e^(a2 r) - 1)/(e^a2 - 1) for both sets | split_role |
| size | CPT law with model size, Eq. 7 | |
| mpl | multi-power law baseline | block (decrement merging, 1 = exact) |
| mixing | data-mixing law c + k*exp(t*r) | |
"""

from __future__ import annotations

from cptlaws.laws.base import Features, Law
from cptlaws.laws.cpt import CPTLaw
from cptlaws.laws.lra import LRALaw
from cptlaws.laws.lra2 import LRA2Law
from cptlaws.laws.mixing import MixingLaw
from cptlaws.laws.mpl import MPLLaw
from cptlaws.laws.replay import ReplayLaw, ReplayFlexLaw, ReplayRptLaw
from cptlaws.laws.size import SizeLaw

LAWS = {
    cls.name: cls
    for cls in (LRALaw, LRA2Law, CPTLaw, ReplayLaw, ReplayRptLaw, ReplayFlexLaw, SizeLaw, MPLLaw, MixingLaw)
}


def get_law(name: str, **options) -> Law:
    """A law instance by registry name; ``options`` go to its constructor (e.g. split_role)."""
    if isinstance(name, Law):
        return name
    try:
        cls = LAWS[name]
    except KeyError:
        raise ValueError(f"unknown law {name!r} (known: {', '.join(sorted(LAWS))})") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"law {name!r}: bad options {options!r} ({exc})") from None


__all__ = ["Features", "Law", "LAWS", "get_law"]
