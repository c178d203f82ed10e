"""SLURM support against a real single-node cluster (scripts/slurm-cluster.sh): jobs go through sbatch,
GPU requests reach sbatch and the job, the profile's status command tracks jobs to the end, and a run
that cannot reach SLURM stops at once with a message saying why."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cptlaws import slurm as cs

from slurm_support import (
    PARTITION,
    ACCOUNT,
    PROFILE,
    STATE_DIR,
    broken_slurm_conf,
    cluster_cmd,
    cluster_down,
    cluster_up,
    make_profile,
    path_without_slurm,
    run_snakemake,
    run_uuid,
    sacct_jobs,
)

REPO = Path(__file__).resolve().parents[1]
TEST_WF = REPO / "tests" / "data" / "slurm_wf" / "Snakefile"


@pytest.fixture(scope="module")
def slurm_cluster():
    cluster = cluster_up()
    yield cluster
    cluster_down(cluster)


# --- the profile itself (no cluster needed) ----------------------------------------------------


def test_profile_has_required_settings():
    prof = yaml.safe_load(PROFILE.read_text())
    assert prof["executor"] == "slurm"
    # explicit status command: the plugin's auto-choice hangs on clusters without accounting
    assert prof["slurm-status-command"] in ("sacct", "squeue")
    assert prof["retries"] >= 1 and prof["rerun-incomplete"] is True
    assert 1 <= prof["jobs"] <= 500
    n, per = prof["max-jobs-per-timespan"].split("/")
    assert float(n) / {"1s": 1, "1m": 60}[per] <= 1.0, "submission rate must be gentle (<= 1 job/s)"
    assert prof["max-status-checks-per-second"] <= 1
    assert "code" not in prof["rerun-triggers"], "editing rule code must not retrain every run"
    train = prof["set-resources"]["train"]
    assert {"gpu", "cpus_per_gpu", "mem_mb", "runtime"} <= set(train)
    # nothing site-specific is active: partition and account are left for the user to fill in
    for section in [prof["default-resources"], *prof["set-resources"].values()]:
        assert "slurm_partition" not in section and "slurm_account" not in section
    assert not prof.get("slurm-array-jobs"), "array jobs have an open deadlock bug on large waves"


def test_resource_constants_are_read_from_the_profile_syntax():
    assert cs._constant("'gpu'") == "gpu"
    assert cs._constant('"a100-part"') == "a100-part"
    assert cs._constant("gpu") == "gpu"
    assert cs._constant("2 * attempt") is None  # an expression: nothing to check up front
    assert cs._constant(lambda wc: "x") is None

    class RS:
        default_resources = {"slurm_partition": "'cpu'", "mem_mb": 100}
        overwrite_resources = {"train": {"slurm_partition": "'gpu'"}, "fit": {"slurm_account": "'a, b'"}}

    class WF:
        resource_settings = RS()

    assert cs._resource_values(WF(), "slurm_partition") == {"cpu", "gpu"}
    assert cs._resource_values(WF(), "slurm_account") == {"a", "b"}


def test_check_workflow_is_a_no_op_for_other_executors():
    class Plugin:
        name = "local"

    class WF:
        executor_plugin = Plugin()

    cs.check_workflow(WF())  # must not call any SLURM command (none may exist here)


# --- the cluster ------------------------------------------------------------------------------------


@pytest.mark.slurm
def test_cluster_script_is_idempotent(slurm_cluster):
    t0 = time.monotonic()
    p = cluster_cmd("up", timeout=300)
    assert p.returncode == 0, p.stderr
    assert "starting" not in p.stderr, f"a second `up` restarted daemons:\n{p.stderr}"
    assert time.monotonic() - t0 < 60
    st = cluster_cmd("status", timeout=60)
    assert st.returncode == 0, st.stdout + st.stderr
    for daemon in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"):
        assert f"{daemon}" in st.stdout and "stopped" not in st.stdout
    assert "accounting: sacct ok" in st.stdout
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %G"], capture_output=True, text=True, timeout=30).stdout
    assert PARTITION in sinfo and "gpu:2" in sinfo


@pytest.mark.slurm
def test_preflight_names_missing_partition_and_account(slurm_cluster):
    rep = cs.preflight("sacct", [PARTITION], [ACCOUNT])
    assert any("sacct" in i for i in rep.info)
    with pytest.raises(cs.SlurmPreflightError) as err:
        cs.preflight("sacct", ["no-such-part"], ["no-such-acct"])
    msg = str(err.value)
    assert "partition 'no-such-part'" in msg and f"available: {PARTITION}" in msg
    assert "account 'no-such-acct'" in msg


@pytest.mark.slurm
@pytest.mark.slow
def test_workflow_jobs_go_through_sbatch_with_gpu(slurm_cluster, tmp_path):
    work = tmp_path / "wf"
    work.mkdir()
    prof = make_profile(tmp_path / "profile")
    n_cpu = 3
    p = run_snakemake(["-s", str(TEST_WF), "--profile", str(prof), "--config", f"count={n_cpu}"], cwd=work)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-5000:]
    assert "SLURM preflight ok" in log

    jobs = sacct_jobs(run_uuid(log))
    expected = {f"rule_cpu_wildcards_{i}" for i in range(n_cpu)} | {"rule_train", "rule_summary"}
    print(f"\nsbatch jobs seen in accounting: {len(jobs)} ({', '.join(sorted(j['Comment'] for j in jobs))})")
    assert sorted(j["Comment"] for j in jobs) == sorted(expected), "one sbatch job per workflow job"
    assert all(j["State"] == "COMPLETED" for j in jobs), jobs
    assert {j["Partition"] for j in jobs} == {PARTITION} and {j["Account"] for j in jobs} == {ACCOUNT}

    # every output was written inside the SLURM job that accounting lists for it
    by_comment = {j["Comment"]: j["JobIDRaw"] for j in jobs}
    for i in range(n_cpu):
        assert (work / f"out/cpu/{i}.txt").read_text().split()[0] == f"job={by_comment[f'rule_cpu_wildcards_{i}']}"

    train = next(j for j in jobs if j["Comment"] == "rule_train")
    assert "--gpus=1" in train["SubmitLine"] and "--cpus-per-gpu=1" in train["SubmitLine"]
    assert "gres/gpu=1" in train["AllocTRES"]
    assert all("gres/gpu" not in j["AllocTRES"] for j in jobs if j is not train)
    fields = dict(kv.split("=", 1) for kv in (work / "out/gpu.txt").read_text().split())
    assert fields["job"] == train["JobIDRaw"]
    if stat.S_ISCHR(os.stat(STATE_DIR / "fakegpu0").st_mode):
        # GRES files are device nodes: SLURM binds one to the job like a real GPU
        assert fields["cuda"] in ("0", "1")


@pytest.mark.slurm
@pytest.mark.slow
def test_squeue_status_command_works_without_accounting(slurm_cluster, tmp_path):
    # the documented alternative for clusters without slurmdbd: sacct fails, squeue tracks the jobs
    conf = broken_slurm_conf(tmp_path / "etc", "accounting")
    work = tmp_path / "wf"
    work.mkdir()
    prof = make_profile(tmp_path / "profile", status_command="squeue")
    env = {"SLURM_CONF": str(conf)}
    assert subprocess.run(["sacct", "-n"], env={**os.environ, **env}, capture_output=True).returncode != 0
    p = run_snakemake(["-s", str(TEST_WF), "--profile", str(prof), "--config", "count=1"], cwd=work, env=env)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-5000:]
    assert "status command: squeue" in log
    assert (work / "out/summary.txt").read_text().count("job=") == 2
    assert len(sacct_jobs(run_uuid(log))) == 3  # checked with the working accounting


def _assert_fails_fast(p, log: str, elapsed: float, needle: str, work: Path):
    assert p.returncode != 0, log[-3000:]
    assert needle in log, log[-3000:]
    assert "SLURM preflight failed, nothing was submitted" in log
    assert "has been submitted with SLURM jobid" not in log
    assert not (work / "out").exists()
    assert elapsed < 120, f"took {elapsed:.0f} s to give up"


@pytest.mark.slurm
@pytest.mark.slow
def test_unreachable_controller_fails_fast(slurm_cluster, tmp_path):
    conf = broken_slurm_conf(tmp_path / "etc", "controller")
    work = tmp_path / "wf"
    work.mkdir()
    prof = make_profile(tmp_path / "profile")
    t0 = time.monotonic()
    p = run_snakemake(
        ["-s", str(TEST_WF), "--profile", str(prof)], cwd=work, env={"SLURM_CONF": str(conf)}, timeout=300
    )
    log = p.stdout + p.stderr
    _assert_fails_fast(p, log, time.monotonic() - t0, "cannot reach the SLURM controller", work)


@pytest.mark.slurm
@pytest.mark.slow
def test_broken_accounting_with_sacct_fails_fast(slurm_cluster, tmp_path):
    # the plugin's trap: sacct present but unusable -> every status poll fails -> Snakemake waits forever
    conf = broken_slurm_conf(tmp_path / "etc", "accounting")
    work = tmp_path / "wf"
    work.mkdir()
    prof = make_profile(tmp_path / "profile", status_command="sacct")
    t0 = time.monotonic()
    p = run_snakemake(
        ["-s", str(TEST_WF), "--profile", str(prof)], cwd=work, env={"SLURM_CONF": str(conf)}, timeout=300
    )
    log = p.stdout + p.stderr
    _assert_fails_fast(p, log, time.monotonic() - t0, "`sacct` fails", work)
    assert "slurm-status-command: squeue" in log  # tells the user the way out


@pytest.mark.slow
def test_no_slurm_commands_fails_fast(tmp_path):
    # the slurm profile used where SLURM is not installed (a laptop, a compute node without clients)
    work = tmp_path / "wf"
    work.mkdir()
    prof = make_profile(tmp_path / "profile")
    t0 = time.monotonic()
    p = run_snakemake(
        ["-s", str(TEST_WF), "--profile", str(prof)],
        cwd=work,
        env={"PATH": path_without_slurm(tmp_path / "bin")},
        timeout=300,
    )
    log = p.stdout + p.stderr
    _assert_fails_fast(p, log, time.monotonic() - t0, "SLURM client commands not found on PATH", work)
