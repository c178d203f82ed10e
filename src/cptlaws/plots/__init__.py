"""Paper figures and tables of a study, drawn only from the table / JSON formats of docs/design.md.

``render_all(study, out_dir)`` writes every figure it has inputs for (PDF + 300-dpi PNG), the LaTeX /
markdown tables, and ``manifest.json`` listing what was written and what was skipped and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from cptlaws.errors import InputError
from cptlaws.io import write_json

from .common import FigureSkipped
from .inputs import StudyOutputs, load_outputs
from .style import styled

log = logging.getLogger("cptlaws.plots")


def _figures() -> dict[str, Callable]:
    from .fig_cmr import fig_cmr
    from .fig_curves import fig_decomposition, fig_loss_curves
    from .fig_effects import fig_effects
    from .fig_heldout import fig_heldout
    from .fig_schedules import fig_schedules
    from .fig_summary import fig_summary

    return {
        "fig1_schedules": fig_schedules,
        "fig2_loss_curves": fig_loss_curves,
        "fig3_decomposition": fig_decomposition,
        "fig4_heldout": fig_heldout,
        "fig5_effects": fig_effects,
        "fig6_cmr": fig_cmr,
        "fig8_summary": fig_summary,
    }


FIGURE_NAMES = (
    "fig1_schedules",
    "fig2_loss_curves",
    "fig3_decomposition",
    "fig4_heldout",
    "fig5_effects",
    "fig6_cmr",
    "fig8_summary",
)
TABLE_NAMES = ("tab_params", "tab_heldout")


def render(study: StudyOutputs, name: str, out_dir: str | Path) -> list[Path]:
    """Render one figure; raises FigureSkipped when its inputs are absent."""
    from .style import save

    func = _figures()[name]
    with styled():
        fig = func(study)
        return save(fig, out_dir, name)


def render_all(study: StudyOutputs, out_dir: str | Path, only=None) -> dict:
    """Every figure and table that the inputs allow; returns (and writes) the manifest."""
    from .tables import write_tables

    out_dir = Path(out_dir)
    manifest = {"written": {}, "skipped": {}}
    for name in FIGURE_NAMES:
        if only and name not in only:
            continue
        try:
            manifest["written"][name] = [str(p) for p in render(study, name, out_dir)]
            log.info("wrote %s", name)
        except FigureSkipped as exc:
            manifest["skipped"][name] = str(exc)
            log.warning("skipped %s: %s", name, exc)
    if not only or any(t in only for t in TABLE_NAMES):
        for name, result in write_tables(study, out_dir).items():
            if isinstance(result, str):
                manifest["skipped"][name] = result
                log.warning("skipped %s: %s", name, result)
            else:
                manifest["written"][name] = [str(p) for p in result]
    write_json(out_dir / "manifest.json", manifest)
    return manifest


__all__ = [
    "FIGURE_NAMES",
    "TABLE_NAMES",
    "FigureSkipped",
    "InputError",
    "StudyOutputs",
    "load_outputs",
    "render",
    "render_all",
]
