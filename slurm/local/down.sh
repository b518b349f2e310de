#!/usr/bin/env bash
# Stop the one-node Slurm started by slurm/local/up.sh: cancel its jobs, stop slurmd, slurmctld and
# munged, remove the generated /etc/slurm/slurm.conf. The packages stay installed.
set -uo pipefail
STATE="${SLURM_LOCAL_STATE:-/var/lib/masksuite-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# masksuite local one-node Slurm"

if [ -f "$CONF" ] && ! grep -q "^$MARK" "$CONF"; then
  echo "slurm-down: $CONF was not written by slurm/local/up.sh: leaving this machine's Slurm alone" >&2
  exit 1
fi
scancel --user="$(id -un)" 2>/dev/null || true
stop() {  # stop the daemon whose pid file is $1: TERM, then KILL after 10 s
  [ -f "$1" ] || return 0
  pid="$(cat "$1")"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
stop "$STATE/slurmd.pid"
stop "$STATE/slurmctld.pid"
stop /run/munge/munged.pid
rm -f "$CONF" /etc/slurm/gres.conf
echo "slurm-down: local cluster stopped"
