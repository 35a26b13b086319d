#!/usr/bin/env bash
# stop-slurm.sh - stop the cluster started by start-slurm.sh, using only the PIDs recorded in
# DIR/slurm-lab.pids (each PID is checked to be alive, to have the expected process name and
# to have our config/socket path on its command line before it is signalled).
#
# Usage: .ci/slurm/stop-slurm.sh [DIR] [--wipe]   (DIR default: $SLURM_LAB_DIR or <repo>/.cluster)
#   --wipe   also delete DIR's runtime state (etc state spool log run bin env.sh)
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/../.." && pwd)"
WIPE=0 DIR=""
for a in "$@"; do case "$a" in --wipe) WIPE=1;; *) DIR="$a";; esac; done
DIR="${DIR:-${SLURM_LAB_DIR:-$REPO/.cluster}}"
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR";; esac
CONF="$DIR/etc/slurm.conf"
PIDS="$DIR/slurm-lab.pids"

log() { echo "[stop-slurm] $*" >&2; }
ours() {  # NAME PID PATTERN (same check as start-slurm.sh)
  local name=$1 pid=$2 pat=$3
  [[ "$pid" =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  [[ "$(cat /proc/$pid/comm 2>/dev/null)" == "$name" ]] || return 1
  tr '\0' ' ' < /proc/$pid/cmdline | grep -qF -- "$pat"
}
pattern() { [[ $1 == munged ]] && echo "$DIR/run/munge.sock" || echo "$CONF"; }
stop_pid() {  # NAME PID: SIGTERM, wait up to 15 s, then SIGKILL
  local name=$1 pid=$2 pat; pat="$(pattern "$name")"
  if ! ours "$name" "$pid" "$pat"; then log "$name pid $pid not running (or not ours), skipping"; return 0; fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 75); do ours "$name" "$pid" "$pat" || { log "$name pid $pid stopped"; return 0; }; sleep 0.2; done
  log "$name pid $pid did not stop after SIGTERM, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null; sleep 0.5
}

if [[ -s "$PIDS" ]]; then
  ctld_pid="$(awk '$1=="slurmctld"{print $2}' "$PIDS")"
  # 1. cancel this cluster's jobs through its own controller, so job steps (slurmstepd and the
  #    user processes they started) end cleanly instead of being orphaned
  if [[ -n "$ctld_pid" ]] && ours slurmctld "$ctld_pid" "$CONF"; then
    jobs="$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
    if [[ -n "${jobs// }" ]]; then
      log "cancelling jobs: $jobs"
      SLURM_CONF="$CONF" scancel $jobs 2>/dev/null
      for _ in $(seq 60); do [[ -z "$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null)" ]] && break; sleep 0.25; done
    fi
  fi
  # 2. daemons in reverse start order: slurmd, slurmctld, munged
  for name in slurmd slurmctld munged; do
    while read -r n pid; do [[ "$n" == "$name" ]] && stop_pid "$n" "$pid"; done < "$PIDS"
  done
  rm -f "$PIDS"
else
  log "no pidfile $PIDS, nothing to stop"
fi

if [[ $WIPE == 1 ]]; then
  rm -rf "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/bin" "$DIR/env.sh"
  log "wiped runtime state in $DIR"
fi
exit 0
