"""One figure style for every paper figure: seaborn "paper" context, a colour-blind-safe palette,
single-column (3.25 in) and double-column (6.75 in) widths, vector PDF + 300-dpi PNG output."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never need a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from cptlaws.io import atomic_path  # noqa: E402

log = logging.getLogger("cptlaws.plots")

COL1 = 3.25  # single column width, inches
COL2 = 6.75  # double column width, inches
DPI = 300
FORMATS = ("pdf", "png")

# Okabe-Ito: distinguishable under the common colour-vision deficiencies. Its yellow (#F0E442) vanishes
# on white paper, so Paul Tol's olive takes its place; black is kept for the fitted law.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#999933", "#000000"]
GREY = "#7f7f7f"
LAW_COLOR = "#000000"
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]

_RC = {
    "font.size": 8,
    "axes.labelsize": 8,
    "axes.titlesize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6.5,
    "legend.title_fontsize": 7,
    "legend.frameon": False,
    "legend.handlelength": 1.8,
    "lines.linewidth": 1.1,
    "lines.markersize": 3.5,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.4,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": DPI,
    "figure.dpi": 100,
    "pdf.fonttype": 42,  # TrueType: text stays text (searchable, editable) in the PDF
    "ps.fonttype": 42,
    "mathtext.fontset": "dejavusans",
    "axes.formatter.use_mathtext": True,
    "figure.constrained_layout.use": True,
}


def apply_style() -> None:
    """Set the global style (idempotent)."""
    sns.set_theme(context="paper", style="ticks", palette=OKABE_ITO, rc=_RC)


@contextmanager
def styled() -> Iterator[None]:
    """The paper style inside a ``with`` block, restoring the caller's rcParams afterwards."""
    with plt.rc_context():
        apply_style()
        yield


def palette(n: int) -> list[str]:
    """``n`` distinguishable colours: Okabe-Ito for up to 8, then a perceptually uniform map."""
    if n <= len(OKABE_ITO) - 1:  # keep black for the fitted law
        return OKABE_ITO[:n]
    return [matplotlib.colors.to_hex(c) for c in plt.get_cmap("viridis")(np.linspace(0.0, 0.9, n))]


def ordered_colors(n: int) -> list[str]:
    """Colours for an ordered variable (ratios, peak LRs): a sequential colour-blind-safe map."""
    if n == 1:
        return [OKABE_ITO[0]]
    return [matplotlib.colors.to_hex(c) for c in sns.color_palette("viridis", n_colors=n)[::-1]]


def figure(width: float = COL1, height: float | None = None, nrows: int = 1, ncols: int = 1, **kw):
    """A figure with constrained layout at a paper width (COL1 or COL2)."""
    if height is None:
        height = width * 0.72 if ncols == 1 else width / ncols * 0.8 * nrows
    kw.setdefault("squeeze", False)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kw)
    return fig, axes


def sci_scale(values) -> tuple[float, str]:
    """(divisor, label suffix) that puts values of ~1e-3 into the axis label, e.g. ' ($10^{-3}$)':
    matplotlib's offset text would otherwise sit on the panel letter."""
    vmax = float(np.nanmax(np.abs(values))) if np.size(values) else 0.0
    if not np.isfinite(vmax) or vmax == 0 or 1e-2 <= vmax < 1e3:
        return 1.0, ""
    e = int(np.floor(np.log10(vmax)))
    return 10.0**e, f" ($\\times 10^{{{e}}}$)"


def panel_label(ax, letter: str) -> None:
    """Bold (a), (b), ... in the top-left corner, outside the data area."""
    ax.text(-0.02, 1.02, f"({letter})", transform=ax.transAxes, ha="right", va="bottom", fontweight="bold")


def save(fig, out_dir: str | Path, name: str, formats=FORMATS) -> list[Path]:
    """Write ``name.pdf`` (vector) and ``name.png`` (300 dpi) atomically; close the figure."""
    out_dir = Path(out_dir)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        # No creation date: the same inputs give byte-identical PDFs, so reruns do not look like changes.
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths
