#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine (controller + compute node), for the tests and for
# trying `python -m pipeline.launch --cluster slurm` without a real cluster. Idempotent: does
# nothing when the local cluster already answers. Needs root; installs Debian's slurm-wlm and munge
# with apt-get when they are missing. Stop it with slurm/local/down.sh (`make slurm-down`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
STATE="${SLURM_LOCAL_STATE:-/var/lib/masksuite-slurm}"
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf
MARK="# masksuite local one-node Slurm"

die() { echo "slurm-up: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  die "needs root (it installs packages and starts munged, slurmctld and slurmd); run it as root or with sudo"
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and apt-get is not available: install them by hand"
  echo "slurm-up: installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
    || die "apt-get install slurm-wlm munge failed"
fi

if [ -f "$CONF" ] && ! grep -q "^$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script: this machine already belongs to a Slurm cluster; use it directly"
fi

if [ -f "$GRES" ] && ! grep -q "^$MARK" "$GRES"; then
  die "$GRES exists and was not written by this script: this machine already belongs to a Slurm cluster; use it directly"
fi

# munge: the key and the daemon (authentication between Slurm's daemons and commands).
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then mungekey --create --force; else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munged did not start (see /var/log/munge/munged.log)"
fi

# slurm.conf from the template, with this machine's name, CPUs and memory (at least 16 CPUs and
# 64 GB: see slurm.conf.in).
host="$(hostname -s)"
cpus="$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)"
memory="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
real_cpus="$cpus"
[ "$cpus" -ge 16 ] || cpus=16
[ "$memory" -ge 65536 ] || memory=65536
mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/gpus" /etc/slurm
sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEMORY@|$memory|g" -e "s|@STATE@|$STATE|g" \
  "$here/slurm.conf.in" > "$CONF.tmp"
# GPUs that only count. Slurm 22.05 drops a GPU GRES without a File= ("Removing file-less GPU"),
# and wants each File= to be a character device: two links to /dev/null. No cgroup constrains
# devices here, so nothing is opened through them; a job's CUDA_VISIBLE_DEVICES names its GPU.
ln -sfn /dev/null "$STATE/gpus/gpu0"
ln -sfn /dev/null "$STATE/gpus/gpu1"
printf '%s\nName=gpu File=%s/gpus/gpu[0-1]\n' "$MARK" "$STATE" > "$GRES.tmp"
changed=1; cmp -s "$CONF.tmp" "$CONF" && cmp -s "$GRES.tmp" "$GRES" && changed=0
mv "$CONF.tmp" "$CONF"
mv "$GRES.tmp" "$GRES"

# slurmctld and slurmd: start those not running (the pid files name them).
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {  # TERM the daemon whose pid file is $1, KILL after 10 s
  running "$1" || return 0
  kill "$(cat "$1")" 2>/dev/null || return 0
  for _ in $(seq 100); do running "$1" || return 0; sleep 0.1; done
  kill -9 "$(cat "$1")" 2>/dev/null || true
}
if [ "$changed" = 1 ]; then
  # A new configuration (plugins, GRES) needs new daemons, not only `scontrol reconfigure`.
  stop "$STATE/slurmd.pid"
  stop "$STATE/slurmctld.pid"
fi
if ! running "$STATE/slurmctld.pid"; then
  slurmctld -c  # -c: clean start, forget jobs of an earlier local cluster
fi
if ! running "$STATE/slurmd.pid"; then
  slurmd
fi

# Wait until the node accepts jobs.
for _ in $(seq 60); do
  state="$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)"
  case "$state" in
    idle|mixed|allocated|completing) echo "slurm-up: one-node cluster ready ($host: $real_cpus CPUs taken as $cpus, 2 GPUs that only count; partitions debug, gpu)"; exit 0 ;;
    down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
die "the node did not become idle in 60 s; logs: $STATE/slurmctld.log, $STATE/slurmd.log"
