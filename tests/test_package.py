"""The package as shipped: lint and format, light CLI imports, and a wheel that works outside the checkout."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
HEAVY = ("pandas", "scipy", "torch", "matplotlib")


def _imported(code: str, *args: str) -> set[str]:
    """Top-level modules imported by ``python -X importtime -c code`` (from stderr)."""
    p = subprocess.run([PY, "-X", "importtime", "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    mods = set()
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return mods


def test_ruff_lint_and_format_are_clean():
    ruff = Path(PY).parent / "ruff"
    for cmd in (
        [str(ruff), "check", "src", "tests", "benchmarks"],
        [str(ruff), "format", "--check", "src", "tests", "benchmarks"],
    ):
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        assert p.returncode == 0, f"{' '.join(cmd[1:])}:\n{p.stdout[-3000:]}{p.stderr[-1000:]}"


@pytest.mark.parametrize("argv", [[], ["train", "--help"], ["fit", "--help"], ["study", "--help"]])
def test_cli_imports_no_heavy_library(argv):
    code = (
        "import contextlib, io, sys\n"
        "from cptlaws.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    build_parser().parse_args(sys.argv[1:])\n"
    )
    heavy = _imported(code, *argv) & set(HEAVY)
    assert not heavy, f"cptlaws {' '.join(argv)} imports {sorted(heavy)}"


def test_parsing_a_study_imports_no_scipy_or_torch():
    heavy = _imported("from cptlaws.study.config import load_study; load_study('config/config.yaml')")
    assert not heavy & {"scipy", "torch"}, heavy & {"scipy", "torch"}


def test_study_validate_from_an_installed_wheel_outside_the_checkout(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [PY, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)], check=True, cwd=tmp_path
    )
    (whl,) = wheels.glob("cptlaws-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(whl)], check=True, cwd=tmp_path)
    config = tmp_path / "study.yaml"
    config.write_text((REPO / "config" / "config.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the checkout's editable install
    p = subprocess.run(
        [PY, "-c", "import cptlaws, sys; from cptlaws.cli import main; print(cptlaws.__file__); sys.exit(main())",
         "study", "validate", str(config)],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines()[0].startswith(str(site)), p.stdout
    assert ": ok," in p.stdout and "PT run(s)" in p.stdout
