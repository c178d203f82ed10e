"""Helpers for the tests that run against a real local SLURM cluster (scripts/slurm-cluster.sh).

Kept out of conftest.py so the SLURM machinery loads only for the SLURM tests.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
STATE_DIR = Path(os.environ.get("CPTLAWS_SLURM_STATE", "/var/lib/cptlaws-slurm"))
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
# what the cluster script creates; a user edits these two keys of the profile the same way
PARTITION = os.environ.get("CPTLAWS_SLURM_PARTITION", "debug")
ACCOUNT = os.environ.get("CPTLAWS_SLURM_ACCOUNT", "research")
SLURM_CLIENTS = ("sbatch", "sinfo", "squeue", "scancel", "sacct", "scontrol", "sacctmgr", "sshare", "srun", "salloc")


# Only a non-root or non-Debian machine may skip; anything else that stops the cluster is a failure.
def cluster_unsupported_reason() -> str | None:
    if platform.system() != "Linux" or not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        return "SLURM tests need a Debian machine with apt-get (scripts/slurm-cluster.sh installs slurm-wlm)"
    if os.geteuid() != 0:
        return "SLURM tests need root (scripts/slurm-cluster.sh installs packages and starts daemons)"
    return None


def cluster_cmd(action: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), action], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


class Cluster:
    """The running local cluster; `started` tells whether this session brought it up (and must stop it)."""

    def __init__(self, started: bool):
        self.started = started


def cluster_up() -> Cluster:
    reason = cluster_unsupported_reason()
    if reason:
        pytest.skip(reason)
    if cluster_cmd("status", timeout=60).returncode == 0:
        return Cluster(started=False)
    t0 = time.monotonic()
    p = cluster_cmd("up")
    if p.returncode != 0:
        pytest.fail(
            f"scripts/slurm-cluster.sh up failed (rc {p.returncode}) after {time.monotonic() - t0:.0f} s:\n"
            f"{p.stderr[-4000:]}\n{p.stdout[-2000:]}",
            pytrace=False,
        )
    print(f"\nlocal SLURM cluster up in {time.monotonic() - t0:.0f} s")
    return Cluster(started=True)


def cluster_down(cluster: Cluster) -> None:
    if cluster.started:
        p = cluster_cmd("down", timeout=300)
        assert p.returncode == 0, f"scripts/slurm-cluster.sh down failed:\n{p.stderr[-3000:]}"


def make_profile(dst: Path, status_command: str = "sacct", **top_level) -> Path:
    """A copy of profiles/slurm with its EDIT keys filled in for the local cluster and test-speed timings.

    Only timing and sizing keys change; status command, retries, requeue, rerun triggers etc. are the
    real profile's, so these tests exercise what users run.
    """
    prof = yaml.safe_load(PROFILE.read_text())
    prof.update(
        {
            "slurm-init-seconds-before-status-checks": 2,
            "seconds-between-status-checks": 2,
            "max-status-checks-per-second": 1,
            "max-jobs-per-timespan": "10/1s",
            "latency-wait": 5,
            "slurm-status-command": status_command,
            "slurm-keep-successful-logs": True,
        }
    )
    prof.update(top_level)
    prof.setdefault("default-resources", {}).update(
        {"slurm_partition": f"'{PARTITION}'", "slurm_account": f"'{ACCOUNT}'", "mem_mb": 500, "runtime": 15}
    )
    # the node has 2 CPUs: one CPU per GPU job so GPU and CPU jobs can run side by side
    prof.setdefault("set-resources", {}).setdefault("train", {}).update(
        {"cpus_per_gpu": 1, "mem_mb": 1500, "runtime": 15}
    )
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return dst


def run_snakemake(
    args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        return subprocess.run(
            [str(SNAKEMAKE), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(
            f"snakemake {' '.join(args)} did not finish within {timeout} s (hang?)\n{out[-3000:]}\n{err[-3000:]}"
        )


def run_uuid(log: str) -> str:
    m = re.search(r"SLURM run ID: (\S+)", log)
    assert m, f"no 'SLURM run ID' in the Snakemake log: was the slurm executor used?\n{log[-2000:]}"
    return m.group(1)


SACCT_FIELDS = ("JobIDRaw", "JobName", "State", "Partition", "Account", "Comment", "ReqTRES", "AllocTRES", "SubmitLine")


def sacct_jobs(name: str) -> list[dict]:
    """Accounting records (allocations, not steps) of the jobs a Snakemake run submitted (job name = run id)."""
    p = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", "now-2days", "--name", name, "-o", ",".join(SACCT_FIELDS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, f"sacct failed: {p.stderr}"
    rows = []
    for line in p.stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", len(SACCT_FIELDS) - 1)  # SubmitLine is last: it may hold '|'
        rows.append(dict(zip(SACCT_FIELDS, parts)))
    return rows


def broken_slurm_conf(dst: Path, what: str) -> Path:
    """A copy of the live slurm.conf whose clients cannot reach the controller or the accounting DB.

    Pointing SLURM_CONF at it reproduces, for the client side only, a login node with the wrong
    controller / without slurmdbd, without disturbing the running cluster.
    """
    text = Path("/etc/slurm/slurm.conf").read_text()
    if what == "controller":
        text = re.sub(r"(?m)^SlurmctldHost=.*$", lambda m: m.group(0) + "\nSlurmctldPort=6899", text)
    elif what == "accounting":
        text = re.sub(r"(?m)^AccountingStorageHost=.*$", lambda m: m.group(0) + "\nAccountingStoragePort=6898", text)
    else:
        raise ValueError(what)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "slurm.conf").write_text(text)
    gres = Path("/etc/slurm/gres.conf")
    if gres.exists():
        shutil.copy(gres, dst / "gres.conf")
    return dst / "slurm.conf"


def path_without_slurm(dst: Path) -> str:
    """A PATH with every usual tool except the SLURM clients (a laptop or a non-login node)."""
    dst.mkdir(parents=True, exist_ok=True)
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        if not Path(d).is_dir():
            continue
        for f in Path(d).iterdir():
            link = dst / f.name
            if f.name in SLURM_CLIENTS or link.exists() or link.is_symlink():
                continue
            link.symlink_to(f)
    return f"{Path(sys.executable).parent}:{dst}"
