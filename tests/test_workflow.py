"""End to end: the smoke study through Snakemake with the local profile, then what a config change reruns.

One real run of `config/studies/smoke.yaml` (corpora -> tokenizer -> tokens -> PT -> CPT grid -> tables ->
fits -> checks -> figures -> report) in a scratch directory; the incremental tests dry-run edited copies of
that config against its outputs and read which jobs Snakemake would schedule.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import SMOKE, scheduled, snakemake, write_config

from cptlaws.schedules import lr_array, phase_lrs
from cptlaws.study.config import load_study

pytestmark = pytest.mark.slow


def test_smoke_study_writes_every_output(smoke_study):
    wd, cfg, config = smoke_study
    study = load_study(config)
    runs = pd.read_parquet(wd / "results/tables/runs.parquet")
    assert set(runs["run_id"]) == set(study.runs)
    assert (runs["status"] == "ok").all()
    curves = pd.read_parquet(wd / "results/tables/curves.parquet")
    # every run has every validation set at every eval step
    assert set(curves["split"]) == {"general", "code"}
    per = curves.groupby(["run_id", "step"])["split"].nunique()
    assert (per == 2).all()
    # the logged LR is the exact schedule value of that update (CPT runs: the whole PT + CPT history)
    pt = cfg["pt"]
    for rid, row in runs.set_index("run_id").iterrows():
        c = curves[(curves["run_id"] == rid) & (curves["split"] == "general")]
        if row["phase"] == "pt":
            lrs = lr_array(pt["schedules"][row["pt_schedule"]], pt["steps"])
        else:
            lrs = phase_lrs(pt["schedules"][row["pt_schedule"]], pt["steps"], int(row["transfer_step"]),
                            cfg["cpt"]["schedules"][row["cpt_schedule"]], cfg["cpt"]["steps"])  # fmt: skip
        st = c["step"].to_numpy()
        st = st[st > 0]
        np.testing.assert_allclose(c.set_index("step").loc[st, "lr"].to_numpy(), lrs[st - 1], rtol=1e-12)
    # CPT on code: domain loss falls and general loss rises from the branch point (the paper's finding)
    for rid in runs.loc[(runs["phase"] == "cpt") & (runs["ratio"] == 1.0), "run_id"]:
        c = curves[curves["run_id"] == rid].pivot(index="step", columns="split", values="loss")
        assert c["code"].iloc[-1] < c["code"].iloc[0] - 0.3, rid
        assert c["general"].iloc[-1] > c["general"].iloc[0], rid
    for a in ("cpt", "replay", "cmr"):
        doc = json.loads((wd / f"results/fits/summary/{a}.json").read_text())
        assert doc["fits"], a
    checks = pd.read_parquet(wd / "results/checks/heldout.parquet")
    assert set(checks["check"]) == {c["name"] for c in cfg["checks"]}
    assert np.isfinite(checks["value"]).all() and checks["passed"].dtype == bool
    assert "| check |" in (wd / "results/checks/heldout.md").read_text()
    figs = {p.name for p in (wd / "results/figures").iterdir()}
    for stem in ("fig1_schedules", "fig2_loss_curves", "fig4_heldout", "fig6_cmr", "fig8_summary"):
        assert {f"{stem}.pdf", f"{stem}.png"} <= figs


def test_noop_rerun_schedules_nothing(smoke_study, venv_bin, report):
    wd, _, config = smoke_study
    t0 = time.perf_counter()
    p = snakemake(wd, config, "--dry-run", venv_bin=venv_bin)
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Nothing to be done" in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
    report(f"no-op dry run of the smoke study: {wall:.1f} s")


def test_adding_a_ratio_trains_only_the_new_run(smoke_study, venv_bin):
    wd, cfg, config = smoke_study
    new = copy.deepcopy(cfg)
    new["cpt"]["grids"][0]["ratio"].append(0.75)
    cfg2 = write_config(wd / "study_more.yaml", new)
    added = set(load_study(cfg2).runs) - set(load_study(config).runs)
    assert len(added) == 1
    p = snakemake(wd, cfg2, "--dry-run", venv_bin=venv_bin)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = scheduled(p.stdout + p.stderr)
    assert sorted(jobs.get("train", [])) == [f"run={r}" for r in sorted(added)], jobs
    assert not {"corpus", "tokenizer", "tokenize"} & set(jobs), jobs
    assert {"collect", "fit_cpt", "fit_replay", "fit_cmr", "check", "figures"} <= set(jobs), jobs


def test_changing_a_fit_setting_retrains_nothing(smoke_study, venv_bin):
    wd, cfg, _ = smoke_study
    new = copy.deepcopy(cfg)
    new["fits"]["n_starts"] = 150
    p = snakemake(wd, write_config(wd / "study_fit.yaml", new), "--dry-run", venv_bin=venv_bin)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = scheduled(p.stdout + p.stderr)
    assert "train" not in jobs and "collect" not in jobs, jobs
    assert {"fit_cpt", "fit_replay", "fit_cmr"} & set(jobs), jobs

    # a held-out threshold only re-runs the checks (and what reads them), never a fit
    new = copy.deepcopy(cfg)
    new["checks"][0]["threshold"] = 0.07
    p = snakemake(wd, write_config(wd / "study_chk.yaml", new), "--dry-run", venv_bin=venv_bin)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = scheduled(p.stdout + p.stderr)
    assert "check" in jobs and not {"train", "collect", "fit_cpt", "fit_replay", "fit_cmr"} & set(jobs), jobs


def test_report_bundles_the_figures(smoke_study, venv_bin):
    wd, _, config = smoke_study
    report = wd / "report.zip"
    p = snakemake(wd, config, "--report", str(report), venv_bin=venv_bin)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    import zipfile

    names = zipfile.ZipFile(report).namelist()
    assert any(n.endswith("report.html") for n in names), names[:20]
    assert sum(n.endswith(".png") and "fig" in n for n in names) >= 5, names


def test_bad_config_stops_at_parse_time(tmp_path, venv_bin):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["cpt"]["grids"][0]["ratio"].append(1.5)
    p = snakemake(tmp_path, write_config(tmp_path / "bad.yaml", cfg), "--dry-run", venv_bin=venv_bin, timeout=120)
    assert p.returncode != 0
    assert "cpt.grids[0].ratio" in p.stdout + p.stderr, (p.stdout + p.stderr)[-2000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_workflow_is_lint_and_format_clean(venv_bin, repo_root):
    lint = subprocess.run(
        [str(venv_bin / "snakemake"), "--lint"], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, (lint.stdout + lint.stderr)[-3000:]
    fmt = subprocess.run(
        [str(venv_bin / "snakefmt"), "--check", "workflow"], cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_workflow_finds_cptlaws_without_the_venv_on_path(tmp_path, venv_bin, repo_root):
    """`.venv/bin/snakemake ...` as documented, the venv not activated: the rules still find `cptlaws`
    (issue 15 item 6; exited 127, `cptlaws: command not found`). One real job: the bytes tokenizer."""
    import os
    import shutil

    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != venv_bin.resolve()
    )
    assert shutil.which("cptlaws", path=path) is None, "the test needs a PATH without cptlaws"
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["tokenizer"] = {"kind": "bytes", "vocab": 256}
    config = write_config(tmp_path / "study.yaml", cfg)
    target = "resources/tokenizer/bytes256/tokenizer.json"
    cmd = [str(venv_bin / "snakemake"), target, "--snakefile", str(repo_root / "workflow" / "Snakefile"),
           "--directory", str(tmp_path), "--profile", str(repo_root / "profiles" / "local"), "--cores", "1",
           "--configfile", str(config)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PATH": path})
    out = p.stdout + p.stderr
    log = tmp_path / "logs" / "tokenizer.log"
    assert p.returncode == 0, out[-3000:] + (log.read_text() if log.exists() else "")
    assert (tmp_path / target).is_file() and "command not found" not in out
