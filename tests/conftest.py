"""Shared pytest setup."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SNAKEFILE = REPO / "workflow" / "Snakefile"
SMOKE = REPO / "config" / "studies" / "smoke.yaml"

# The hub is never reachable here or in CI: make every Hugging Face call fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Directory of the running interpreter's scripts (snakemake, cptlaws)."""
    return Path(sys.executable).parent


def _say(pytestconfig, msg: str) -> None:
    tr = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capman = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None:
        print(msg)
        return
    with capman.global_and_fixture_disabled():  # fd-level capture would swallow it otherwise
        tr.write_line(msg)


@pytest.fixture(scope="session")
def report(pytestconfig):
    """Write a line into the test log even when output is captured: CI's log keeps these figures."""
    return lambda msg: _say(pytestconfig, msg)


def snakemake(workdir: Path, config: Path, *extra: str, venv_bin: Path, timeout: float = 900, profile=None):
    """Run the study workflow in `workdir` (a scratch dir) on `config`, with the venv's `cptlaws` on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"  # the rules call `cptlaws`
    cmd = [str(venv_bin / "snakemake"), "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
           "--profile", str(profile or REPO / "profiles" / "local"), "--cores", "2", "--configfile", str(config), *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)


def scheduled(out: str) -> dict[str, list[str]]:
    """rule -> [wildcards] of the jobs in a dry run's log."""
    jobs: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not m:
            continue
        w = re.search(r"wildcards: (.*)", block)
        jobs.setdefault(m.group(1), []).append(w.group(1).strip() if w else "")
    return jobs


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory, venv_bin, report):
    """The smoke study run once locally (profiles/local): (workdir, config dict, config path)."""
    wd = tmp_path_factory.mktemp("smoke")
    cfg = yaml.safe_load(SMOKE.read_text())
    config = write_config(wd / "study.yaml", cfg)
    t0 = time.perf_counter()
    p = snakemake(wd, config, venv_bin=venv_bin)
    wall = time.perf_counter() - t0
    assert p.returncode == 0, f"smoke study failed:\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}"
    report(f"smoke study (local profile, 2 cores): {wall:.1f} s")
    return wd, cfg, config
