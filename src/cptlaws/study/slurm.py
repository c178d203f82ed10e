"""Fail-fast checks before Snakemake hands jobs to SLURM.

Without them, a run that cannot reach SLURM fails late or not at all: with no controller every sbatch
fails only after the job's retries, and with `sacct` but no working accounting the executor plugin's
status polls fail silently and Snakemake waits forever after the jobs have finished.

Use from a Snakefile (runs once, in the main Snakemake process, only when there are jobs to run):

    from cptlaws.study.slurm import check_workflow
    onstart:
        check_workflow(workflow)

or by hand on a login node: ``python -m cptlaws.study.slurm [--status-command sacct|squeue]
[--partition P] [--account A]``.
"""

from __future__ import annotations

import argparse
import getpass
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from cptlaws.errors import ClusterError

# squeue forgets finished jobs after MinJobAge; the plugin needs them for at least a few polls.
MIN_JOB_AGE_FOR_SQUEUE = 120


@dataclass
class PreflightReport:
    info: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _run(cmd: list[str], timeout: float) -> tuple[int, str, str]:
    """Run a SLURM client command with a hard timeout (an unreachable controller can stall them)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "", f"no answer within {timeout:.0f} s"
    except OSError as exc:
        return 127, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-3:]) if lines else "(no output)"


def preflight(
    status_command: str | None = "sacct",
    partitions: list[str] | tuple[str, ...] = (),
    accounts: list[str] | tuple[str, ...] = (),
    timeout: float = 30.0,
) -> PreflightReport:
    """Check that SLURM can take and track jobs; raise ClusterError naming each problem.

    status_command: what the executor plugin will poll with ('sacct' or 'squeue'; None = plugin default,
    which is sacct when the binary exists).
    """
    rep = PreflightReport()
    _check_clients(rep)
    _check_partitions(rep, partitions, timeout)
    _check_status_command(rep, status_command, timeout)
    if accounts:
        _check_accounts(rep, accounts, timeout)
    if rep.problems:
        raise ClusterError(_format(rep))
    return rep


def _check_clients(rep: PreflightReport) -> None:
    """The SLURM client commands are on PATH (else raise at once: nothing else can be checked)."""
    missing = [b for b in ("sbatch", "sinfo", "squeue", "scancel") if shutil.which(b) is None]
    if missing:
        rep.problems.append(
            f"SLURM client commands not found on PATH: {', '.join(missing)}. Run Snakemake on the cluster's "
            "login node (or install slurm-client), or run locally with --profile profiles/local."
        )
        raise ClusterError(_format(rep))


def _check_partitions(rep: PreflightReport, partitions, timeout: float) -> None:
    """The controller answers `sinfo` (else raise at once) and lists the requested partitions, up."""
    rc, out, err = _run(["sinfo", "-h", "-o", "%P|%a|%D|%T|%G"], timeout)
    if rc != 0:
        rep.problems.append(
            f"cannot reach the SLURM controller: `sinfo` failed ({_one_line(err or out)}). "
            "Check `scontrol ping`, that munge runs on this host, and SLURM_CONF."
        )
        raise ClusterError(_format(rep))
    rows = [ln.split("|") for ln in out.strip().splitlines() if ln.strip()]
    known = {r[0].rstrip("*"): r for r in rows}
    rep.info.append("partitions: " + ", ".join(sorted(known)) if known else "partitions: none")
    if not rows:
        rep.problems.append("SLURM answers but lists no partition (sinfo is empty): no job could ever start.")
    for part in partitions:
        if part not in known:
            rep.problems.append(
                f"partition {part!r} (slurm_partition in the profile's resources) does not exist; "
                f"available: {', '.join(sorted(known)) or 'none'}."
            )
        elif known[part][1] != "up":
            rep.problems.append(f"partition {part!r} is {known[part][1]}, not up.")


def _check_status_command(rep: PreflightReport, status_command: str | None, timeout: float) -> None:
    """The command the executor plugin polls with works: sacct answers, or squeue keeps finished jobs long enough."""
    effective = status_command or ("sacct" if shutil.which("sacct") else "squeue")
    if effective == "sacct":
        if shutil.which("sacct") is None:
            rep.problems.append(
                "slurm-status-command is 'sacct' but sacct is not installed here; set "
                "`slurm-status-command: squeue` in the profile."
            )
            return
        rc, out, err = _run(["sacct", "-n", "-X", "-P", "-S", "now-1hours", "-o", "JobIDRaw,State"], timeout)
        if rc != 0:
            rep.problems.append(
                f"`sacct` fails ({_one_line(err or out)}): job accounting (slurmdbd) is not usable, so the "
                "executor plugin could never see jobs finish and Snakemake would wait forever. Set "
                "`slurm-status-command: squeue` in the profile (needs MinJobAge >= "
                f"{MIN_JOB_AGE_FOR_SQUEUE} s) or fix accounting."
            )
        else:
            rep.info.append("status command: sacct (accounting answers)")
    elif effective == "squeue":
        rc, out, err = _run(["scontrol", "show", "config"], timeout)
        m = re.search(r"^MinJobAge\s*=\s*(\d+)", out, re.M) if rc == 0 else None
        if m and int(m.group(1)) < MIN_JOB_AGE_FOR_SQUEUE:
            rep.warnings.append(
                f"slurm-status-command is 'squeue' but MinJobAge is {m.group(1)} s (< {MIN_JOB_AGE_FOR_SQUEUE}): "
                "finished jobs may vanish before Snakemake sees them; the plugin then falls back to sacct."
            )
        rep.info.append("status command: squeue")
    else:
        rep.problems.append(f"unknown slurm-status-command {status_command!r} (use 'sacct' or 'squeue').")


def _check_accounts(rep: PreflightReport, accounts, timeout: float) -> None:
    """Each requested account is one of the user's (when sacctmgr answers; otherwise sbatch will judge)."""
    user = getpass.getuser()
    rc, out, err = _run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=account"], timeout)
    # No answer from sacctmgr (no accounting DB): nothing to check against; sbatch will judge.
    mine = {a.strip().lower() for a in out.split()} if rc == 0 else set()
    for account in accounts:
        if mine and account.lower() not in mine:
            rep.problems.append(
                f"account {account!r} (slurm_account in the profile's resources) is not one of user "
                f"{user}'s accounts: {', '.join(sorted(mine))}."
            )


def _format(rep: PreflightReport) -> str:
    lines = ["SLURM preflight failed, nothing was submitted:"]
    lines += [f"  - {p}" for p in rep.problems]
    return "\n".join(lines)


_NAME = re.compile(r"^[A-Za-z0-9_.-]+(\s*,\s*[A-Za-z0-9_.-]+)*$")  # one name or a comma list


def _constant(value) -> str | None:
    """The string a resource value stands for when it is a constant ('name', "'name'"), else None."""
    raw = getattr(value, "raw", value)  # snakemake Resource objects keep the profile's text in .raw
    if raw is None or callable(raw):
        return None
    s = str(raw).strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        s = s[1:-1]
    return s if s and _NAME.match(s) else None


def _resource_values(workflow, name: str) -> set[str]:
    """Constant values of resource `name` given by --default-resources / --set-resources (the profile)."""
    rs = getattr(workflow, "resource_settings", None)
    mappings = [getattr(rs, "default_resources", None) or {}]
    mappings += list((getattr(rs, "overwrite_resources", None) or {}).values())
    found: set[str] = set()
    for mapping in mappings:
        if name in mapping:
            v = _constant(mapping[name])
            if v:
                found.update(x for x in re.split(r"[,\s]+", v) if x)
    return found


def check_workflow(workflow) -> None:
    """Snakefile hook: run `preflight` when the run uses the SLURM executor; a no-op otherwise."""
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None or getattr(plugin, "name", "") != "slurm":
        return
    from snakemake.exceptions import WorkflowError
    from snakemake.logging import logger

    settings = getattr(workflow, "executor_settings", None)
    try:
        rep = preflight(
            status_command=getattr(settings, "status_command", None),
            partitions=sorted(_resource_values(workflow, "slurm_partition")),
            accounts=sorted(_resource_values(workflow, "slurm_account")),
        )
    except ClusterError as exc:
        raise WorkflowError(str(exc)) from None
    for w in rep.warnings:
        logger.warning(f"SLURM preflight: {w}")
    logger.info("SLURM preflight ok: " + "; ".join(rep.info))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cptlaws.study.slurm", description="Check that SLURM can take and track jobs."
    )
    ap.add_argument("--status-command", choices=("sacct", "squeue"), default="sacct")
    ap.add_argument("--partition", action="append", default=[], help="partition(s) the profile uses")
    ap.add_argument("--account", action="append", default=[], help="account(s) the profile uses")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per SLURM command")
    args = ap.parse_args(argv)
    try:
        rep = preflight(args.status_command, args.partition, args.account, args.timeout)
    except ClusterError as exc:
        print(exc, file=sys.stderr)
        return 1
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print("SLURM ok: " + "; ".join(rep.info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
