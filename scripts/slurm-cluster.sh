#!/usr/bin/env bash
# A real single-node SLURM cluster on this Debian machine, for tests and for trying the SLURM profile:
# munge + MariaDB + slurmdbd (so `sacct` works) + slurmctld + slurmd, with a fake GRES gpu:N.
# No systemd: every daemon runs in its foreground flavour as a background process; its PID is kept in
# $STATE/pids and `down` stops exactly those PIDs.
#
#   scripts/slurm-cluster.sh up       install missing Debian packages, write configs, start what is not running
#   scripts/slurm-cluster.sh down     cancel jobs, stop the daemons started by `up` (by PID)
#   scripts/slurm-cluster.sh status   print daemon PIDs and node state; exit 0 only if the cluster takes jobs
#
# All three are idempotent. Needs root. Settings (environment):
#   CPTLAWS_SLURM_STATE     state dir (PID files, daemon output, fake GPU files)   [/var/lib/cptlaws-slurm]
#   CPTLAWS_SLURM_CPUS      CPUs the node advertises                                 [nproc]
#   CPTLAWS_SLURM_MEM_MB    memory the node advertises                               [80 % of RAM]
#   CPTLAWS_SLURM_GPUS      fake GPUs (GRES gpu)                                     [2]
#   CPTLAWS_SLURM_PARTITION partition name                                          [debug]
#   CPTLAWS_SLURM_ACCOUNT   account created for the calling user                    [research]
#   CPTLAWS_SLURM_TIMEOUT   seconds to wait for each daemon                          [60]
set -euo pipefail

STATE=${CPTLAWS_SLURM_STATE:-/var/lib/cptlaws-slurm}
PIDS=$STATE/pids
CPUS=${CPTLAWS_SLURM_CPUS:-$(nproc)}
MEM_MB=${CPTLAWS_SLURM_MEM_MB:-$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)}
GPUS=${CPTLAWS_SLURM_GPUS:-2}
PARTITION=${CPTLAWS_SLURM_PARTITION:-debug}
ACCOUNT=${CPTLAWS_SLURM_ACCOUNT:-research}
TIMEOUT=${CPTLAWS_SLURM_TIMEOUT:-60}
CLUSTER=localcluster
ETC=/etc/slurm
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
# Start order; `down` goes in reverse.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

log() { echo "slurm-cluster: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# --- PID bookkeeping ---------------------------------------------------------------------------
pid_of() { # prints the PID of a daemon we started, if it is still that daemon
    local name=$1 f=$PIDS/$1.pid pid
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ -d /proc/$pid ]] || return 1
    # guard against PID reuse: the process must still be the program we started
    grep -q "$name" "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

start_bg() { # start_bg NAME CMD...  (detached, own session, output to $STATE/NAME.out)
    local name=$1
    shift
    setsid "$@" >"$STATE/$name.out" 2>&1 </dev/null &
    echo $! >"$PIDS/$name.pid"
}

wait_for() { # wait_for WHAT CMD...  (retry CMD until it succeeds or TIMEOUT passes)
    local what=$1 i
    shift
    for ((i = 0; i < TIMEOUT * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    return 1
}

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1"; }

# A daemon that died at start leaves its reason in its own output or log: show it.
fail_start() {
    local name=$1 what=$2
    log "$name did not become ready ($what) within ${TIMEOUT}s; last lines of its output:"
    tail -n 20 "$STATE/$name.out" >&2 2>/dev/null || true
    [[ -f /var/log/slurm/$name.log ]] && tail -n 20 "/var/log/slurm/$name.log" >&2
    die "$name failed to start (see $STATE/$name.out and /var/log/slurm/)"
}

# --- setup -------------------------------------------------------------------------------------
preflight() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts system daemons)"
    command -v apt-get >/dev/null && [[ -f /etc/debian_version ]] ||
        die "needs a Debian-like system with apt-get (found: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"))"
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$STATE/apt.out" 2>&1 ||
        {
            tail -n 20 "$STATE/apt.out" >&2
            die "apt-get install ${missing[*]} failed (full output: $STATE/apt.out)"
        }
}

# Replace a config file only when its content changes, so `up` on a running cluster is a no-op.
install_file() { # install_file DEST MODE OWNER  (content on stdin)
    local dest=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp"
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        return 1
    fi
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$dest"
    return 0
}

write_configs() {
    mkdir -p "$ETC" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm
    chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm /run/slurm
    local i files=()
    for ((i = 0; i < GPUS; i++)); do
        # slurmd binds GRES files to jobs (CUDA_VISIBLE_DEVICES) only if they are device nodes: make
        # harmless copies of /dev/null; fall back to empty files (scheduling only) where mknod is not allowed
        if [[ ! -c $STATE/fakegpu$i ]]; then
            rm -f "$STATE/fakegpu$i"
            mknod "$STATE/fakegpu$i" c 1 3 2>/dev/null || : >"$STATE/fakegpu$i"
        fi
        files+=("$STATE/fakegpu$i")
    done
    local gres_node="" gres_types=""
    if ((GPUS > 0)); then
        gres_node="Gres=gpu:$GPUS"
        gres_types="GresTypes=gpu"
    fi
    CONF_CHANGED=0
    install_file "$ETC/slurm.conf" 644 root:root <<EOF && CONF_CHANGED=1 || true
# written by scripts/slurm-cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
KillWait=10
InactiveLimit=0
MailProg=/bin/true
MpiDefault=none
SlurmdParameters=config_overrides
$gres_types
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    {
        echo "# written by scripts/slurm-cluster.sh: fake GPUs (empty files), scheduling only"
        if ((GPUS > 0)); then
            echo "NodeName=localhost Name=gpu File=$STATE/fakegpu[0-$((GPUS - 1))]"
        fi
    } | install_file "$ETC/gres.conf" 644 root:root && CONF_CHANGED=1 || true

    # slurmdbd.conf holds the DB password: keep the existing one so reruns do not churn it.
    local pass
    pass=$(sed -n 's/^StoragePass=//p' "$ETC/slurmdbd.conf" 2>/dev/null || true)
    [[ -n $pass ]] || pass=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    DB_PASS=$pass
    install_file "$ETC/slurmdbd.conf" 600 slurm:slurm <<EOF || true
# written by scripts/slurm-cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
EOF
}

# --- daemons -----------------------------------------------------------------------------------
start_munged() {
    pid_of munged >/dev/null && return 0
    pgrep -x munged >/dev/null && die "a munged not started by this script is running (pid $(pgrep -x munged | tr '\n' ' ')); stop it first"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || {
        /usr/sbin/mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    }
    log "starting munged"
    start_bg munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F --force
    wait_for "munge" bash -c 'munge -n | unmunge' || fail_start munged "munge -n | unmunge"
}

start_mariadbd() {
    pid_of mariadbd >/dev/null && return 0
    pgrep -x mariadbd >/dev/null && die "a mariadbd not started by this script is running (pid $(pgrep -x mariadbd | tr '\n' ' ')); stop it first"
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >"$STATE/mariadb-install.out" 2>&1 ||
        die "mariadb-install-db failed (see $STATE/mariadb-install.out)"
    log "starting mariadbd"
    # lock timeout as slurmdbd recommends; bound to loopback only
    start_bg mariadbd /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --innodb-lock-wait-timeout=900
    wait_for "mariadb" mariadb-admin ping || fail_start mariadbd "mariadb-admin ping"
    mariadb -u root <<EOF || die "could not create the slurm database user in MariaDB"
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    pid_of slurmdbd >/dev/null && return 0
    log "starting slurmdbd"
    start_bg slurmdbd /usr/sbin/slurmdbd -D
    wait_for "slurmdbd" port_open 6819 || fail_start slurmdbd "port 6819"
}

start_slurmctld() {
    if pid_of slurmctld >/dev/null; then
        # TRES and GRES changes need a restart, not just `scontrol reconfigure`; job state survives it
        ((CONF_CHANGED)) || return 0
        log "configuration changed: restarting slurmctld"
        stop_daemon slurmctld
    fi
    # The cluster must exist in the accounting DB before slurmctld registers with it.
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr could not add cluster $CLUSTER"
    fi
    log "starting slurmctld"
    start_bg slurmctld /usr/sbin/slurmctld -D -i
    wait_for "slurmctld" scontrol ping || fail_start slurmctld "scontrol ping"
}

start_slurmd() {
    if pid_of slurmd >/dev/null; then
        # gres/CPU changes need a slurmd restart, not just reconfigure
        ((CONF_CHANGED)) || return 0
        stop_daemon slurmd
    fi
    log "starting slurmd"
    start_bg slurmd /usr/sbin/slurmd -D -N localhost
    node_ready() { sinfo -h -n localhost -o %T | grep -Eq '^(idle|mixed|allocated|completing)'; }
    if ! wait_for "slurmd" node_ready; then
        log "node state: $(sinfo -h -n localhost -o '%T %E' 2>&1)"
        fail_start slurmd "node idle in sinfo"
    fi
    # a node left DOWN/DRAINED by an earlier unclean stop is put back into service
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
}

setup_accounts() {
    local user
    user=${SUDO_USER:-$(id -un)}
    if ! sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="cptlaws test" Organization=cptlaws >/dev/null ||
            die "sacctmgr add account $ACCOUNT failed"
    fi
    local u
    for u in "$user" root; do
        if ! sacctmgr -n -P list assoc where user="$u" account="$ACCOUNT" format=user | grep -qx "$u"; then
            sacctmgr -i add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null ||
                die "sacctmgr add user $u failed"
        fi
    done
    # slurmctld caches associations: wait until a job can really be accepted for this account
    wait_for "association" bash -c "scontrol show assoc_mgr users=$user accounts=$ACCOUNT flags=assoc | grep -q 'Account=$ACCOUNT'" ||
        die "slurmctld does not see the association $user/$ACCOUNT"
}

stop_daemon() {
    local name=$1 pid i
    if ! pid=$(pid_of "$name"); then
        rm -f "$PIDS/$name.pid"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < TIMEOUT * 4; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.25
    done
    if [[ -d /proc/$pid ]]; then
        log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$PIDS/$name.pid"
}

# --- commands ----------------------------------------------------------------------------------
cmd_up() {
    preflight
    mkdir -p "$PIDS"
    install_packages
    write_configs
    start_munged
    start_mariadbd
    start_slurmdbd
    start_slurmctld
    start_slurmd
    setup_accounts
    log "up: cluster $CLUSTER, partition $PARTITION, account $ACCOUNT, node localhost CPUs=$CPUS RealMemory=${MEM_MB}MB gpu:$GPUS"
}

cmd_down() {
    preflight
    mkdir -p "$PIDS"
    # Jobs outlive slurmd (slurmstepd is its own process): cancel them while the controller is up.
    if pid_of slurmctld >/dev/null && scontrol ping >/dev/null 2>&1; then
        if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
            log "cancelling running jobs"
            scancel --full --quiet $(squeue -h -o %i) 2>/dev/null || true
            wait_for "jobs to end" bash -c '[[ -z $(squeue -h -t R,CG,PD -o %i) ]]' || log "some jobs are still listed after ${TIMEOUT}s"
        fi
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        stop_daemon "${DAEMONS[i]}"
    done
    log "down"
}

cmd_status() {
    local name pid ok=0
    for name in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$name"); then
            printf '%-10s running  pid %s\n' "$name" "$pid"
        else
            printf '%-10s stopped\n' "$name"
            ok=1
        fi
    done
    if ((ok == 0)); then
        sinfo -h -o 'partition %P  nodes %D  state %T  gres %G  cpus %c  mem %m MB' || ok=1
        sacct -n -X -S now-1minute >/dev/null 2>&1 && echo "accounting: sacct ok" || {
            echo "accounting: sacct FAILS"
            ok=1
        }
    fi
    return $ok
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
    echo "usage: $0 up | down | status" >&2
    exit 2
    ;;
esac
