#!/bin/sh
# Starts a single-node Slurm cluster on this machine for the Slurm tests (docs/slurm.md):
# installs Debian's packages when missing (as root), writes /etc/slurm/slurm.conf (auth/none,
# no accounting daemon, the fast scheduler settings) and runs slurmctld and slurmd in the
# foreground, backgrounded, without systemd. Idempotent: a running cluster is left alone.
# Exit 0 when sinfo shows the node idle; otherwise 1 with the reason on stderr.
set -u
STATE=${EXAQ_SLURM_STATE:-/var/lib/exaq-test-slurm}
say() { echo "slurm-up: $*" >&2; }

if sinfo -h -o %T 2>/dev/null | grep -qE "^(idle|mix|mixed|alloc|allocated|completing)"; then
    say "a cluster is already up"; exit 0
fi
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 || ! command -v sbatch >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then say "slurm is not installed and we are not root"; exit 1; fi
    say "installing slurm-wlm (Debian packages)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm slurmctld slurmd slurm-client >"${TMPDIR:-/tmp}/exaq-slurm-apt.log" 2>&1; then
        (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm slurmctld slurmd slurm-client) >>"${TMPDIR:-/tmp}/exaq-slurm-apt.log" 2>&1 ||
            { say "apt-get install failed (see ${TMPDIR:-/tmp}/exaq-slurm-apt.log)"; exit 1; }
    fi
fi
if [ "$(id -u)" != 0 ]; then say "starting slurmctld and slurmd needs root"; exit 1; fi
mkdir -p "$STATE" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm
cpus=$(nproc)
mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
cat >/etc/slurm/slurm.conf <<CONF
# written by exaq's tests/slurm/up.sh: a single-node test cluster
ClusterName=exaqtest
SlurmctldHost=localhost
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MinJobAge=300
KillWait=5
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1,sched_min_interval=0
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
if ! [ -s "$STATE/ctld.pid" ] || ! kill -0 "$(cat "$STATE/ctld.pid")" 2>/dev/null; then
    slurmctld -D >>/var/log/slurm/slurmctld.fg.log 2>&1 &
    echo $! >"$STATE/ctld.pid"
fi
if ! [ -s "$STATE/slurmd.pid" ] || ! kill -0 "$(cat "$STATE/slurmd.pid")" 2>/dev/null; then
    slurmd -D >>/var/log/slurm/slurmd.fg.log 2>&1 &
    echo $! >"$STATE/slurmd.pid"
fi
i=0
while [ $i -lt 150 ]; do
    if sinfo -h -o %T 2>/dev/null | grep -qE "^(idle|mix|mixed|alloc|allocated|completing)"; then say "up ($(sinfo -h -o '%P %D %T' | head -1))"; exit 0; fi
    sleep 0.2; i=$((i + 1))
done
say "the node did not become idle in 30 s; last log lines:"
tail -5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 2>/dev/null
exit 1
