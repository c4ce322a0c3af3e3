#!/usr/bin/env bash
# Supervisor of one process of the tsdb-operator test environment. Started by
# `tsdb_operator_testenv::process::Supervised`; not meant to be run by hand.
#
# Usage: supervise.sh LOG GRACE_SECONDS MARKER_DIR -- PROGRAM [ARGS...]
#
# Guarantees
# - PROGRAM runs with stdin from /dev/null and stdout and stderr appended to LOG.
# - PROGRAM's PID is printed as the only line on stdout.
# - stdin of this script is a pipe whose write end only the test process holds (close-on-exec). EOF on it
#   means the test process is gone, even if it was killed with SIGKILL; PROGRAM is then stopped and the
#   whole process group is killed.
# - SIGTERM, SIGINT or SIGHUP stop PROGRAM: SIGTERM (and SIGCONT, in case it is frozen), then SIGKILL after
#   GRACE_SECONDS.
# - The marker file MARKER_DIR/<PID of this script> exists while this script runs, so the janitor of the
#   environment knows when every supervised process is gone.
# - Exits with PROGRAM's exit status (128+N if it died of signal N).
set -u
log=$1 grace=$2 markers=$3
shift 4

marker="$markers/$$"
: >"$marker"
trap 'rm -f -- "$marker"' EXIT

child='' watcher=''
stop() {
  local orphaned=$1 rc=143 killer
  trap '' TERM INT HUP USR1
  if [ -n "$child" ]; then
    kill -TERM "$child" 2>/dev/null
    kill -CONT "$child" 2>/dev/null
    (
      sleep "$grace" &
      s=$!
      trap 'kill "$s" 2>/dev/null; exit 0' TERM
      wait "$s"
      kill -KILL "$child" 2>/dev/null
    ) &
    killer=$!
    wait "$child"
    rc=$?
    kill "$killer" 2>/dev/null
  fi
  [ -n "$watcher" ] && kill "$watcher" 2>/dev/null
  if [ "$orphaned" = 1 ]; then
    # Nobody waits for us: take down anything PROGRAM left behind in our process group, ourselves included.
    rm -f -- "$marker"
    kill -KILL -- "-$$"
  fi
  exit "$rc"
}
# Set before PROGRAM starts, so a stop request can never slip in before the traps exist.
trap 'stop 0' TERM INT HUP
trap 'stop 1' USR1

exec 3<&0
"$@" </dev/null 3<&- >>"$log" 2>&1 &
child=$!
echo "$child"
exec >/dev/null

# The lifeline: blocks until the test process is gone, then tells this script with SIGUSR1.
(
  read -r -u 3 _
  kill -USR1 $$ 2>/dev/null
) &
watcher=$!
exec 3<&-

wait "$child"
rc=$?
kill "$watcher" 2>/dev/null
exit "$rc"
