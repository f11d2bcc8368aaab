# shellcheck shell=bash
# lib.sh -- helpers shared by the tests/env scripts (sourced, never executed).
#
#   log MSG...                      timestamped progress line on stderr
#   die MSG...                      log and exit 1
#   wait_until TIMEOUT DESC CMD...  poll CMD (quietly, every ND_POLL seconds)
#                                   until it succeeds; fail after TIMEOUT s
#   daemon_start DIR NAME CMD...    start CMD in its own session (setsid) with
#                                   stdout/stderr in DIR/log/NAME.stdout and a
#                                   PID file DIR/pids/NAME.pid
#   daemon_alive DIR NAME           is the process from that PID file running?
#   daemon_wait DIR NAME TIMEOUT DESC CMD...
#                                   wait_until, but fail at once (and show the
#                                   log tail) if the daemon died meanwhile
#   daemons_stop DIR TIMEOUT [NAME...]  SIGTERM the daemons (default: all) of DIR (whole
#                                   process group), wait until all exited;
#                                   SIGKILL what is left after TIMEOUT s
#   tcp_open HOST PORT              does HOST:PORT accept a TCP connection?
#
# PID files hold "PID BOOT_ID STARTTIME" so that a stale file (after a reboot,
# or once the PID has been reused) never makes us signal an unrelated process.
# Every service is started as a session/process-group leader, so stopping it
# also reaps its workers (gunicorn, glance-api and neutron-server fork).

ND_T0=${ND_T0:-${EPOCHREALTIME/./}}
ND_POLL=${ND_POLL:-0.5}

_nd_elapsed() {
  local d=$(( ${EPOCHREALTIME/./} - ND_T0 ))
  printf '%d.%d' $(( d / 1000000 )) $(( d / 100000 % 10 ))
}
log() { printf '[%6ss] %s\n' "$(_nd_elapsed)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

wait_until() {
  local timeout=$1 desc=$2; shift 2
  local deadline=$(( ${EPOCHREALTIME/./} + timeout * 1000000 ))
  while :; do
    if "$@" >/dev/null 2>&1; then log "$desc: ok"; return 0; fi
    if (( ${EPOCHREALTIME/./} > deadline )); then
      log "TIMEOUT (${timeout}s) waiting for $desc"; return 1
    fi
    sleep "$ND_POLL"
  done
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

_nd_proc_start() { # PID -> starttime in clock ticks (field 22 of /proc/PID/stat)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }            # drop "pid (comm) ", comm may contain spaces
  # shellcheck disable=SC2086
  set -- $stat
  echo "${20}"
}
_nd_boot_id() { cat /proc/sys/kernel/random/boot_id; }

# daemon_pid DIR NAME -> prints the PID if that daemon is running, else fails
daemon_pid() {
  local f=$1/pids/$2.pid pid boot start
  [ -s "$f" ] || return 1
  read -r pid boot start < "$f" || true
  [ -n "${pid:-}" ] && [ -n "${start:-}" ] || return 1
  [ "$boot" = "$(_nd_boot_id)" ] || return 1
  [ "$(_nd_proc_start "$pid")" = "$start" ] || return 1
  echo "$pid"
}
daemon_alive() { daemon_pid "$1" "$2" >/dev/null; }

daemon_start() {
  local dir=$1 name=$2; shift 2
  local pidf=$dir/pids/$name.pid pid
  mkdir -p "$dir/pids" "$dir/log"
  if pid=$(daemon_pid "$dir" "$name"); then
    log "$name already running (pid $pid)"; return 0
  fi
  rm -f "$pidf" "$pidf.tmp"
  # bash writes its own PID (it becomes the service by exec) after setsid made
  # it a session and process-group leader, so PID == PGID, whatever setsid did.
  # It first closes every descriptor but 0-2: a daemon must not keep what the
  # caller had open, e.g. the lock of `flock LOCKFILE controlplane.sh ... up`
  # (held for as long as the daemon lives otherwise).
  # shellcheck disable=SC2016  # $$, $0 and $@ are for that inner bash
  setsid bash -c 'for f in /proc/$$/fd/*; do n=${f##*/}; if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi; done
    echo $$ > "$0.tmp"; exec "$@"' "$pidf" "$@" \
    >> "$dir/log/$name.stdout" 2>&1 < /dev/null &
  ND_POLL=0.05 wait_until 5 "$name PID file" test -s "$pidf.tmp" >/dev/null 2>&1 ||
    die "$name: no PID file after 5 s"
  read -r pid < "$pidf.tmp"
  echo "$pid $(_nd_boot_id) $(_nd_proc_start "$pid")" > "$pidf"
  rm -f "$pidf.tmp"
  log "started $name (pid $pid)"
}

daemon_wait() {
  local dir=$1 name=$2 timeout=$3 desc=$4; shift 4
  local deadline=$(( ${EPOCHREALTIME/./} + timeout * 1000000 ))
  while :; do
    if "$@" >/dev/null 2>&1; then log "$desc: ready"; return 0; fi
    if ! daemon_alive "$dir" "$name"; then
      log "$name DIED while waiting for $desc; last lines of its logs:"
      tail -n 25 "$dir/log/$name.stdout" "$dir/log/$name.log" 2>/dev/null >&2 || true
      return 1
    fi
    if (( ${EPOCHREALTIME/./} > deadline )); then
      log "TIMEOUT (${timeout}s) waiting for $desc (see $dir/log/$name.*)"; return 1
    fi
    sleep "$ND_POLL"
  done
}

_nd_groups_left() { # PGID... -> prints those that still have a process
  local p out=""
  for p in "$@"; do kill -0 -- "-$p" 2>/dev/null && out="$out $p"; done
  printf '%s' "$out"
}
_nd_none_left() { [ -z "$(_nd_groups_left "$@")" ]; }

# daemons_stop DIR TIMEOUT [NAME...]: default = every PID file in DIR/pids
daemons_stop() {
  local dir=$1 timeout=$2; shift 2
  local names=("$@") f n pid pids=() left
  if [ ${#names[@]} -eq 0 ]; then
    for f in "$dir"/pids/*.pid; do [ -e "$f" ] && names+=("$(basename "$f" .pid)"); done
  fi
  for n in "${names[@]}"; do
    if pid=$(daemon_pid "$dir" "$n"); then
      kill -TERM -- "-$pid" 2>/dev/null || true
      pids+=("$pid"); log "stopping $n (process group $pid)"
    fi
    rm -f "$dir/pids/$n.pid"
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  if ! wait_until "$timeout" "all ${#pids[@]} process groups exited" _nd_none_left "${pids[@]}"; then
    left=$(_nd_groups_left "${pids[@]}")
    log "SIGKILL to process groups:$left"
    for pid in $left; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    wait_until 10 "killed" _nd_none_left "${pids[@]}"
  fi
}
