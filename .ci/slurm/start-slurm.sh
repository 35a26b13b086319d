#!/usr/bin/env bash
# start-slurm.sh - start a throw-away single-node SLURM cluster (slurmctld + slurmd,
# optionally munged) as root, without systemd, with all state under one directory.
# The project's copy of the verified recipe in /work/shared/slurm; .ci/run uses it, and so can
# a contributor who wants the tests/test_slurm.py integration tests to run instead of skip.
#
# Usage:  .ci/slurm/start-slurm.sh [DIR]     (DIR default: $SLURM_LAB_DIR or <repo>/.cluster)
#         .ci/slurm/start-slurm.sh --print-template
# Then:   source DIR/env.sh             (exports SLURM_CONF, puts DIR/bin (sacct shim) on PATH)
# Stop:   .ci/slurm/stop-slurm.sh [DIR] (kills only the PIDs recorded in DIR/slurm-lab.pids)
#
# Idempotent: if the daemons recorded in DIR/slurm-lab.pids are alive, it only waits for
# readiness and exits 0. Otherwise it stops leftovers (by recorded PID), wipes DIR's
# runtime state and starts fresh.
#
# Environment knobs (all optional):
#   SLURM_LAB_PARTITION=debug    partition name (default partition)
#   SLURM_LAB_GPUS=2             number of fake GPUs (gres/gpu backed by /dev/null); 0 = none
#   SLURM_LAB_CPUS=N             CPUs the node advertises (default: what `slurmd -C` detects);
#                                more than the hardware is allowed (SlurmdParameters=config_overrides)
#   SLURM_LAB_AUTH=none          none | munge   (munge: starts a private munged under DIR)
#   SLURM_LAB_CTLD_PORT=6817     slurmctld port;  SLURM_LAB_SLURMD_PORT=6818 slurmd port
#   SLURM_LAB_SACCT_SHIM=1       install DIR/bin/sacct (answers via squeue; no slurmdbd here)
#   SLURM_LAB_TIMEOUT=60         seconds to wait for the node to become idle
#   SLURM_LAB_TEMPLATE=path      use this slurm.conf template instead of the embedded one
#   SLURM_LAB_INSTALL=1          apt-get install the Debian packages if binaries are missing
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/../.." && pwd)"

print_template() {
cat <<'EOF'
# slurm.conf template for a single-node test cluster (rendered by start-slurm.sh)
ClusterName=@CLUSTER@
SlurmctldHost=localhost
SlurmctldPort=@CTLD_PORT@
SlurmdPort=@SLURMD_PORT@
SlurmUser=root
SlurmdUser=root
AuthType=auth/@AUTH@
CredType=cred/@AUTH@
AuthInfo=@AUTHINFO@
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=5,sched_interval=5
ReturnToService=2
MinJobAge=86400
KillWait=5
MailProg=/bin/true
StateSaveLocation=@DIR@/state
SlurmdSpoolDir=@DIR@/spool
SlurmctldPidFile=@DIR@/run/slurmctld.pid
SlurmdPidFile=@DIR@/run/slurmd.pid
SlurmctldLogFile=@DIR@/log/slurmctld.log
SlurmdLogFile=@DIR@/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=@DIR@/etc/plugstack.conf
@SLURMDPARAMS@
@GRESTYPES@
NodeName=localhost NodeAddr=127.0.0.1 @HW@ RealMemory=@REALMEM@ @NODEGRES@ State=UNKNOWN
PartitionName=@PARTITION@ Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

if [[ "${1:-}" == "--print-template" ]]; then print_template; exit 0; fi

DIR="${1:-${SLURM_LAB_DIR:-$REPO/.cluster}}"
PARTITION="${SLURM_LAB_PARTITION:-debug}"
NGPUS="${SLURM_LAB_GPUS:-2}"
AUTH="${SLURM_LAB_AUTH:-none}"
CTLD_PORT="${SLURM_LAB_CTLD_PORT:-6817}"
SLURMD_PORT="${SLURM_LAB_SLURMD_PORT:-6818}"
SACCT_SHIM="${SLURM_LAB_SACCT_SHIM:-1}"
TIMEOUT="${SLURM_LAB_TIMEOUT:-60}"
CONF="$DIR/etc/slurm.conf"
PIDS="$DIR/slurm-lab.pids"
PKGS="slurmctld slurmd slurm-client"   # pulls munge, libmunge2, slurm-wlm-basic-plugins, libhwloc15, liblua5.1-0

log() { echo "[start-slurm] $*" >&2; }
die() {
  log "ERROR: $*"
  for f in "$DIR"/log/*.log "$DIR"/log/*.stdout; do [[ -s $f ]] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }; done
  [[ "${started_any:-0}" == 1 ]] && stop_recorded   # leave nothing of ours running after a failed start
  exit 1
}

[[ $(id -u) -eq 0 ]] || { log "must run as root"; exit 1; }
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR"; CONF="$DIR/etc/slurm.conf"; PIDS="$DIR/slurm-lab.pids";; esac
[[ "$AUTH" == none || "$AUTH" == munge ]] || { log "SLURM_LAB_AUTH must be none or munge"; exit 1; }

# ---------------------------------------------------------------- binaries
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
  [[ "${SLURM_LAB_INSTALL:-0}" == 1 ]] || { log "slurm binaries missing: apt-get install --no-install-recommends $PKGS (or set SLURM_LAB_INSTALL=1)"; exit 1; }
  log "installing $PKGS"
  tmp_policy=0
  # keep package postinst scripts from starting system munge/slurm services
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; tmp_policy=1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null \
    || { [[ $tmp_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
  [[ $tmp_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
fi

# ---------------------------------------------------------------- helpers
# ours NAME PID PATTERN: is PID alive, named NAME, and does its command line contain PATTERN
# (our config path / socket path)? Guards against killing or trusting a recycled PID.
ours() {
  local name=$1 pid=$2 pat=$3
  [[ "$pid" =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  [[ "$(cat /proc/$pid/comm 2>/dev/null)" == "$name" ]] || return 1
  tr '\0' ' ' < /proc/$pid/cmdline | grep -qF -- "$pat"
}
# stop_recorded: SIGTERM (then SIGKILL after 15 s) every daemon listed in the pidfile that is
# still ours; used for stale/partial clusters and after a failed start (stop-slurm.sh does the
# same, plus cancelling jobs first).
stop_recorded() {
  [[ -s "$PIDS" ]] || return 0
  local name pid pat
  for want in slurmd slurmctld munged; do
    while read -r name pid; do
      [[ "$name" == "$want" ]] || continue
      pat="$CONF"; [[ $name == munged ]] && pat="$DIR/run/munge.sock"
      ours "$name" "$pid" "$pat" || continue
      log "stopping $name pid $pid"; kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 75); do ours "$name" "$pid" "$pat" || break; sleep 0.2; done
      ours "$name" "$pid" "$pat" && kill -KILL "$pid" 2>/dev/null || true
    done < "$PIDS"
  done
  rm -f "$PIDS"
}
node_state() { SLURM_CONF="$CONF" sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1; }
wait_ready() {  # wait until slurmctld answers and the node is idle/mixed/allocated
  local deadline=$((SECONDS + TIMEOUT)) st=""
  while (( SECONDS < deadline )); do
    st="$(node_state || true)"
    case "$st" in idle|mixed|allocated|completing) log "node localhost is '$st'"; return 0;; esac
    for p in "${started_pids[@]:-}"; do [[ -z "$p" ]] || kill -0 "$p" 2>/dev/null || die "daemon pid $p died"; done
    sleep 0.5
  done
  die "node not ready after ${TIMEOUT}s (last state: '${st:-no answer}')"
}
write_env() {
  cat > "$DIR/env.sh" <<EOF
export SLURM_CONF="$CONF"
$( [[ "$SACCT_SHIM" == 1 ]] && echo "export PATH=\"$DIR/bin:\$PATH\"" )
EOF
}

# ---------------------------------------------------------------- already running?
started_pids=()
if [[ -s "$PIDS" ]]; then
  alive=1
  while read -r name pid; do
    case $name in
      slurmctld|slurmd) ours "$name" "$pid" "$CONF" || alive=0;;
      munged)           ours "$name" "$pid" "$DIR/run/munge.sock" || alive=0;;
    esac
  done < "$PIDS"
  if [[ $alive == 1 ]]; then
    log "already running (pids: $(awk '{printf "%s=%s ", $1, $2}' "$PIDS"))"
    wait_ready; write_env; cat "$PIDS"; exit 0
  fi
  log "stale/partial cluster found in $DIR, stopping leftovers"
  stop_recorded
fi

# ---------------------------------------------------------------- fresh state
t_start=$SECONDS
mkdir -p "$DIR"
[[ "$AUTH" == munge ]] && chmod 755 "$DIR"   # munged insists on o+x on its socket's directories
rm -rf "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/bin" "$DIR/env.sh" "$PIDS"
mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/bin"
chmod 755 "$DIR/run"

# hardware line from slurmd -C (CPUs, Boards, SocketsPerBoard, CoresPerSocket, ThreadsPerCore)
hwline="$(slurmd -C | head -n1)"
HW="$(tr ' ' '\n' <<<"$hwline" | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | paste -sd' ')"
mem_mb="$(tr ' ' '\n' <<<"$hwline" | sed -n 's/^RealMemory=//p')"
REALMEM=$(( mem_mb * 95 / 100 ))       # a little below the detected value, else node goes INVAL
SLURMDPARAMS=""
if [[ -n "${SLURM_LAB_CPUS:-}" ]]; then   # advertise N CPUs whatever the hardware has
  [[ "$SLURM_LAB_CPUS" =~ ^[1-9][0-9]*$ ]] || die "SLURM_LAB_CPUS must be a positive integer"
  HW="CPUs=$SLURM_LAB_CPUS" SLURMDPARAMS="SlurmdParameters=config_overrides"
fi

GRESTYPES="" NODEGRES=""
: > "$DIR/etc/gres.conf"
if (( NGPUS > 0 )); then
  # gres/gpu needs File= entries that are char/block devices: symlinks to /dev/null work
  mkdir -p "$DIR/etc/fakegpu"
  for ((i = 0; i < NGPUS; i++)); do ln -sfn /dev/null "$DIR/etc/fakegpu/nvidia$i"; done
  GRESTYPES="GresTypes=gpu" NODEGRES="Gres=gpu:$NGPUS"
  printf 'AutoDetect=off\nNodeName=localhost Name=gpu File=%s/etc/fakegpu/nvidia[0-%d]\n' "$DIR" $((NGPUS - 1)) > "$DIR/etc/gres.conf"
fi
: > "$DIR/etc/plugstack.conf"          # do not pick up /etc/slurm/plugstack.conf

AUTHINFO="cred_expire=10"               # requeued jobs wait cred_expire seconds (default 120)
if [[ "$AUTH" == munge ]]; then
  AUTHINFO="socket=$DIR/run/munge.sock,cred_expire=10"
  dd if=/dev/urandom of="$DIR/etc/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/etc/munge.key"
fi

if [[ -n "${SLURM_LAB_TEMPLATE:-}" ]]; then cat "$SLURM_LAB_TEMPLATE"; else print_template; fi \
  | grep -v '^# slurm.conf template' \
  | sed -e "s#@CLUSTER@#lab#g" -e "s#@DIR@#$DIR#g" -e "s#@CTLD_PORT@#$CTLD_PORT#g" \
        -e "s#@SLURMD_PORT@#$SLURMD_PORT#g" -e "s#@AUTH@#$AUTH#g" -e "s#@AUTHINFO@#$AUTHINFO#g" \
        -e "s#@HW@#$HW#g" -e "s#@REALMEM@#$REALMEM#g" -e "s#@GRESTYPES@#$GRESTYPES#g" \
        -e "s#@NODEGRES@#$NODEGRES#g" -e "s#@PARTITION@#$PARTITION#g" \
        -e "s#@SLURMDPARAMS@#$SLURMDPARAMS#g" > "$CONF"

# sacct shim: there is no slurmdbd, so the real sacct only says "accounting storage is disabled";
# submitit polls `sacct -o JobID,State,NodeList --parsable2 -j ID...` for job states.
if [[ "$SACCT_SHIM" == 1 ]]; then
  cat > "$DIR/bin/sacct" <<'EOF'
#!/usr/bin/env bash
# sacct shim for a slurmdbd-less test cluster: answers from slurmctld's job table via squeue
# (MinJobAge=86400 keeps finished jobs there). Supports -j/--jobs, -o/--format, -n, -p/-P;
# other options are ignored. Fields: JobID JobIDRaw JobName State NodeList Partition User
# Elapsed Start End Submit (others print empty).
ids=() fields="JobID,JobName,Partition,State,NodeList" header=1 trail=""
while (($#)); do
  case "$1" in
    -j|--jobs) ids+=("$2"); shift;; --jobs=*) ids+=("${1#*=}");;
    -o|--format) fields="$2"; shift;; --format=*) fields="${1#*=}";;
    -n|--noheader) header=0;; -p|--parsable) trail="|";; -P|--parsable2) trail="";;
    -S|-E|-u|-A|-M|-s|--starttime|--endtime|--user|--accounts|--state) shift;;
  esac; shift
done
fmt="" hdr=""
IFS=, read -ra F <<<"$fields"
for f in "${F[@]}"; do
  name="${f%%%*}"
  case "${name,,}" in
    jobid) c=%i;; jobidraw) c=%A;; jobname) c=%j;; state) c=%T;; nodelist) c=%N;;
    partition) c=%P;; user) c=%u;; elapsed) c=%M;; start) c=%S;; end) c=%e;; submit) c=%V;; *) c="";;
  esac
  fmt+="${fmt:+|}$c"; hdr+="${hdr:+|}$name"
done
(( header )) && echo "$hdr$trail"
args=(-h -t all -r -o "$fmt$trail")
((${#ids[@]})) && args+=(-j "$(IFS=,; echo "${ids[*]}")")
squeue "${args[@]}" 2>/dev/null \
  | sed -e 's/|CONFIGURING/|RUNNING/' -e 's/|STAGE_OUT/|COMPLETING/' -e 's/|SIGNALING/|COMPLETING/' \
        -e 's/|REQUEUE_FED/|REQUEUED/' -e 's/|REQUEUE_HOLD/|REQUEUED/'
exit 0
EOF
  chmod 755 "$DIR/bin/sacct"
fi

# ---------------------------------------------------------------- start daemons
# -D (foreground) + & gives us the PID directly; setsid detaches from the caller's session;
# all fds redirected so CI runners do not wait on inherited stdout/stderr pipes.
start_daemon() {  # name pidfile match-pattern cmd...
  local name=$1 pidfile=$2 pat=$3; shift 3
  setsid "$@" </dev/null >>"$DIR/log/$name.stdout" 2>&1 &
  local lpid=$! pid=$! deadline=$((SECONDS + 15)) gone=0
  # $! is the daemon itself unless setsid had to fork (caller is a process-group leader);
  # then fall back to the daemon's own pidfile.
  sleep 0.1
  until ours "$name" "$pid" "$pat"; do
    [[ -s "$pidfile" ]] && pid="$(cat "$pidfile")"
    if ! kill -0 "$lpid" 2>/dev/null && ! kill -0 "$pid" 2>/dev/null; then gone=$((gone + 1)); fi
    if (( gone > 10 || SECONDS >= deadline )); then
      started_any=1; echo "$name $pid" >> "$PIDS"; die "$name did not start (see logs below)"
    fi
    sleep 0.2
  done
  echo "$name $pid" >> "$PIDS"; started_pids+=("$pid"); started_any=1
  log "$name started, pid $pid"
}

if [[ "$AUTH" == munge ]]; then
  start_daemon munged "$DIR/run/munged.pid" "$DIR/run/munge.sock" munged -F --socket="$DIR/run/munge.sock" \
    --key-file="$DIR/etc/munge.key" --pid-file="$DIR/run/munged.pid" \
    --seed-file="$DIR/run/munged.seed" --log-file="$DIR/log/munged.log"
  for _ in $(seq 50); do [[ -S "$DIR/run/munge.sock" ]] && break; sleep 0.1; done
fi

start_daemon slurmctld "$DIR/run/slurmctld.pid" "$CONF" slurmctld -D -i -f "$CONF"
# wait for slurmctld to answer before starting slurmd (faster registration)
for _ in $(seq 100); do SLURM_CONF="$CONF" scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
start_daemon slurmd "$DIR/run/slurmd.pid" "$CONF" slurmd -D -f "$CONF" -N localhost

wait_ready
write_env
log "cluster ready in $((SECONDS - t_start))s; config $CONF; pids in $PIDS; use: source $DIR/env.sh"
cat "$PIDS"
