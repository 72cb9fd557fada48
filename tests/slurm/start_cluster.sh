#!/usr/bin/env bash
# A SLURM cluster on this machine, for tests/test_slurm_cluster.py (and .ci/run):
#   bash tests/slurm/start_cluster.sh            # installs slurm-wlm + munge if missing, starts the daemons
#   bash tests/slurm/start_cluster.sh stop
# Needs root and Debian's packages. Two nodes, snn1 and snn2, each a slurmd of its own on this
# host (Debian's slurmd runs several per host with -N <node>) with half the CPUs and memory, so
# that `sbatch --nodes=2` runs for real; their names resolve to 127.0.0.1 through /etc/hosts.
# With one CPU, or an /etc/hosts that cannot be written, one node (this host's name) instead.
set -euo pipefail
if [ "${1:-}" = "stop" ]; then
  for f in /run/slurmctld.pid /run/slurmd*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >/dev/null
fi
host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
nodes=(snn1 snn2)
if [ "$cpus" -lt 2 ] || ! { getent hosts snn1 >/dev/null || { [ -w /etc/hosts ] && echo "127.0.0.1 snn1 snn2" >> /etc/hosts; }; }; then
  nodes=("$host")
fi
mkdir -p /run/munge /var/spool/slurmctld /var/log/slurm /etc/slurm
for n in "${nodes[@]}"; do mkdir -p "/var/spool/slurmd/$n"; done
chown munge:munge /run/munge 2>/dev/null || true
[ -f /etc/munge/munge.key ] || (dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null && chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key)
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
fi
chown -R slurm:slurm /var/spool/slurmctld /var/log/slurm 2>/dev/null || true
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=snnmia
SlurmctldHost=${host}
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerParameters=sched_interval=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
KillWait=5
MinJobAge=600
CONF
if [ "${#nodes[@]}" -eq 1 ]; then
  echo "NodeName=${host} CPUs=${cpus} RealMemory=${mem} State=UNKNOWN" >> /etc/slurm/slurm.conf
else
  port=17001
  for n in "${nodes[@]}"; do
    echo "NodeName=${n} NodeHostname=${host} NodeAddr=127.0.0.1 Port=${port} CPUs=$((cpus / 2)) RealMemory=$((mem / 2)) State=UNKNOWN" >> /etc/slurm/slurm.conf
    port=$((port + 1))
  done
fi
echo "PartitionName=debug Nodes=$(IFS=,; echo "${nodes[*]}") Default=YES MaxTime=INFINITE State=UP" >> /etc/slurm/slurm.conf
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
for n in "${nodes[@]}"; do
  pgrep -f "slurmd -N ${n}\$" >/dev/null || /usr/sbin/slurmd -N "$n"
done
for _ in $(seq 1 30); do
  up=$(sinfo -h -N -o '%T' 2>/dev/null | grep -cE '^(idle|mixed|allocated)' || true)
  if [ "$up" -eq "${#nodes[@]}" ]; then echo "slurm: nodes ${nodes[*]} up (${cpus} CPUs in all)"; exit 0; fi
  sleep 1
done
echo "slurm: the node did not come up; see /var/log/slurm/" >&2
exit 1
