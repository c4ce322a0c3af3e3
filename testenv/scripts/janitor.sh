#!/usr/bin/env bash
# Janitor of one tsdb-operator test environment directory. Started by
# `tsdb_operator_testenv::process::Workdir`; not meant to be run by hand.
#
# Usage: janitor.sh ROOT
#
# Waits for EOF on stdin (a pipe whose write end only the test process holds: EOF means the environment was
# dropped or the test process is gone, even by SIGKILL). Then waits until the supervisors of the environment
# are gone (their marker files in ROOT/run), at most 60 seconds, and removes every path listed in
# ROOT/cleanup and ROOT itself.
set -u
root=$1
read -r _ || true
for ((i = 0; i < 600; i++)); do
  [ -z "$(ls -A "$root/run" 2>/dev/null)" ] && break
  sleep 0.1
done
if [ -f "$root/cleanup" ]; then
  while IFS= read -r path; do
    [ -n "$path" ] && rm -rf -- "$path"
  done <"$root/cleanup"
fi
rm -rf -- "$root"
