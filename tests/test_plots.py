"""Figures and tables rendered from the synthetic fixture study (cptlaws.plots.fixtures)."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pandas as pd
import pytest

from cptlaws.cli import main as cli_main
from cptlaws.errors import InputError
from cptlaws.plots import FIGURE_NAMES, load_outputs, render_all
from cptlaws.plots.fixtures import make_fixture_study, true_fit
from cptlaws.plots.lawcurves import decompose, law_curve, run_schedules
from cptlaws.plots.tables import sig


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory):
    return make_fixture_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def study(fixture_dirs):
    return load_outputs(fixture_dirs["tables"], fixture_dirs["fits"], fixture_dirs["checks"])


@pytest.fixture(scope="module")
def rendered(study, tmp_path_factory):
    """Render every figure once; keep the Figure objects' axes summaries for the emptiness check."""
    import matplotlib.pyplot as plt

    from cptlaws.plots import _figures
    from cptlaws.plots.style import save, styled

    out = tmp_path_factory.mktemp("figures")
    axes_info = {}
    for name, func in _figures().items():
        with styled():
            fig = func(study)
            axes_info[name] = [_axis_has_data(ax) for ax in fig.axes]
            save(fig, out, name)
        plt.close("all")
    return out, axes_info


def _axis_has_data(ax) -> bool:
    """True when the Axes draws data: a line with finite points, a non-empty collection or a patch."""
    for line in ax.get_lines():
        x, y = (np.asarray(v, dtype=float) for v in line.get_data())
        if x.size and np.isfinite(x).any() and np.isfinite(y).any():
            return True
    for coll in ax.collections:
        if len(coll.get_paths()) or (hasattr(coll, "get_offsets") and len(coll.get_offsets())):
            return True
    return any(p.get_visible() for p in ax.patches)


def _png_dpi(path) -> tuple[float, float]:
    """Pixels per inch from the PNG pHYs chunk (unit 1 = metre)."""
    data = path.read_bytes()
    i = data.find(b"pHYs")
    assert i > 0, f"{path.name}: no pHYs chunk"
    px, py, unit = struct.unpack(">IIB", data[i + 4 : i + 13])
    assert unit == 1
    return px * 0.0254, py * 0.0254


def test_every_figure_written_non_empty_vector_300dpi(rendered):
    out, _ = rendered
    for name in FIGURE_NAMES:
        pdf, png = out / f"{name}.pdf", out / f"{name}.png"
        assert pdf.stat().st_size > 5_000, name
        assert png.stat().st_size > 10_000, name
        raw = pdf.read_bytes()
        assert raw.startswith(b"%PDF")
        # Vector: matplotlib writes every raster as an /Image XObject; none may appear.
        assert not re.search(rb"/Subtype\s*/Image", raw), f"{name}.pdf embeds a raster image"
        dx, dy = _png_dpi(png)
        assert round(dx) == 300 and round(dy) == 300, (name, dx, dy)


def test_no_axis_is_empty(rendered):
    _, axes_info = rendered
    for name, flags in axes_info.items():
        assert flags, f"{name}: no axes"
        assert all(flags), f"{name}: axes {[i for i, f in enumerate(flags) if not f]} draw no data"


def test_render_all_writes_tables_and_manifest(study, tmp_path):
    manifest = render_all(study, tmp_path, only={"tab_params", "tab_heldout"})
    assert set(manifest["written"]) == {"tab_params", "tab_heldout"}
    tex = (tmp_path / "tab_params.tex").read_text()
    md = (tmp_path / "tab_params.md").read_text()
    assert r"\toprule" in tex and r"\alpha" in tex and "replay" in tex
    # Every fit's L0 appears with its interval, in both formats.
    for fit in study.fits:
        lo, hi = fit["intervals"]["L0"]
        assert f"{sig(fit['params']['L0'])} [{sig(lo)}, {sig(hi)}]" in md
    held = (tmp_path / "tab_heldout.md").read_text()
    assert "MAE" in held and "4/4" in held
    assert json.loads((tmp_path / "manifest.json").read_text())["written"]


def test_decomposition_sums_to_law_and_shift_is_zero_at_transfer(study):
    scheds = run_schedules(study.runs, study.lrs)
    rid = "cpt-code-r1-cos-from-const1000"
    fit = true_fit("code", "general")
    steps, law = law_curve(fit, scheds[rid])
    hidden, shift = decompose(fit, scheds[rid].areas(0.999).at(steps), 1.0)
    np.testing.assert_allclose(hidden + shift, law)
    assert shift[999] == 0.0  # step 1000 = transfer: the shift term starts at zero
    assert shift[-1] > 0.1  # forgetting on the general set
    dom = true_fit("code", "code")
    _, sh = decompose(dom, scheds[rid].areas(0.999).at(steps), 1.0)
    assert sh[-1] < -0.1  # adaptation on the domain set


def test_fixture_curves_follow_the_law(study):
    """The synthetic data is the law plus noise: residual sd near the fixture's noise level."""
    scheds = run_schedules(study.runs, study.lrs)
    c = study.curves[(study.curves["run_id"] == "cpt-math-r0.6-wsd-from-const1000") & (study.curves["split"] == "math")]
    _, pred = law_curve(true_fit("math", "math"), scheds["cpt-math-r0.6-wsd-from-const1000"], c["step"])
    assert 0.002 < np.std(c["loss"].to_numpy() - pred) < 0.008


def test_missing_optional_inputs_skip_with_reason(fixture_dirs, tmp_path):
    st = load_outputs(fixture_dirs["tables"], tmp_path / "nofits", tmp_path / "nochecks")
    manifest = render_all(st, tmp_path / "out", only={"fig1_schedules", "fig4_heldout", "fig6_cmr", "tab_params"})
    assert "fig1_schedules" in manifest["written"]
    assert "predictions" in manifest["skipped"]["fig4_heldout"]
    assert "cmr" in manifest["skipped"]["fig6_cmr"]
    assert manifest["skipped"]["tab_params"] == "no fit JSON"
    assert not (tmp_path / "out" / "fig4_heldout.pdf").exists()


def test_malformed_table_names_file_and_column(fixture_dirs, tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    for name in ("runs", "lrs"):
        (tables / f"{name}.parquet").write_bytes((fixture_dirs["tables"] / f"{name}.parquet").read_bytes())
    curves = pd.read_parquet(fixture_dirs["tables"] / "curves.parquet").drop(columns=["S2_cpt"])
    curves.to_parquet(tables / "curves.parquet")
    with pytest.raises(InputError, match=r"curves\.parquet.*S2_cpt"):
        load_outputs(tables)
    curves = pd.read_parquet(fixture_dirs["tables"] / "curves.parquet")
    curves.loc[5, "loss"] = np.nan
    curves.to_parquet(tables / "curves.parquet")
    with pytest.raises(InputError, match=r"curves\.parquet: column 'loss' row 5 \(run '.+'\)"):
        load_outputs(tables)


def test_malformed_fit_json_names_file_and_key(fixture_dirs, tmp_path):
    fits = tmp_path / "fits"
    fits.mkdir()
    (fits / "bad.json").write_text(json.dumps({"law": "cpt", "split": "general"}))
    with pytest.raises(InputError, match=r"bad\.json.*params"):
        load_outputs(fixture_dirs["tables"], fits)


def test_cli_plot_fixture_and_errors(tmp_path, capsys):
    assert cli_main(["plot", "fixture", "--out", str(tmp_path / "s")]) == 0
    rc = cli_main(
        [
            "plot",
            "tab_params",
            "--tables",
            str(tmp_path / "s/tables"),
            "--fits",
            str(tmp_path / "s/fits"),
            "--checks",
            str(tmp_path / "s/checks"),
            "--out",
            str(tmp_path / "f"),
        ]
    )
    assert rc == 0 and (tmp_path / "f/tab_params.md").exists()
    assert cli_main(["plot", "fig9_nope", "--out", str(tmp_path / "f")]) == 2
    assert "unknown figure 'fig9_nope'" in capsys.readouterr().err
    rc = cli_main(
        [
            "plot",
            "fig4_heldout",
            "--strict",
            "--tables",
            str(tmp_path / "s/tables"),
            "--fits",
            str(tmp_path / "none"),
            "--checks",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "g"),
        ]
    )
    assert rc == 2 and "fig4_heldout skipped" in capsys.readouterr().err


def test_same_inputs_same_pdf(study, tmp_path):
    """Reruns are byte-identical (no timestamps), so unchanged figures do not look changed."""
    from cptlaws.plots import render

    a = render(study, "fig5_effects", tmp_path / "a")[0].read_bytes()
    b = render(study, "fig5_effects", tmp_path / "b")[0].read_bytes()
    assert a == b


def test_pooled_heldout_panels_keep_the_studys_own_laws():
    from cptlaws.plots.fig_heldout import study_law_predictions
    from cptlaws.plots.inputs import StudyOutputs

    pred = pd.DataFrame(
        {"check": ["a", "a", "cmp"], "run_id": ["r1", "r2", "r1"], "loss": [1.0, 2.0, 1.0], "pred": [1.0, 2.0, 3.0]}
    )
    heldout = pd.DataFrame({"check": ["a", "cmp"], "law": ["replay_flex", "replay"]})
    st = StudyOutputs(
        predictions=pred, heldout=heldout, fits=[{"law": "replay_flex", "split": "general", "params": {}}]
    )
    assert list(study_law_predictions(st)["check"]) == ["a", "a"]
    st.fits = [{"law": "cpt", "split": "general", "params": {}}]  # no check uses a fitted law: keep them all
    assert len(study_law_predictions(st)) == 3
