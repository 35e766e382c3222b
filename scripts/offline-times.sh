#!/usr/bin/env bash
# How long a mount takes to answer while S3 is gone: `cat` of a cached file, `ls -l` of a
# listed directory, `cat` of an uncached file (each twice), with the S3 server stopped
# (connections refused) and frozen (SIGSTOP: connections accepted, never answered).
#
#   scripts/offline-times.sh [S3CACHEFS_BINARY]      (default: target/debug/s3cachefs)
#
# Give the binary of an older commit to compare before and after. Needs root (FUSE) and
# the example server (cargo build --example s3server). Prints one line per measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/debug/s3cachefs}")
SERVER=$PWD/target/debug/examples/s3server
[ -x "$SERVER" ] || SERVER=$PWD/target/release/examples/s3server
[ -x "$SERVER" ] || { echo "build the example server first: cargo build --example s3server" >&2; exit 1; }

WORK=$(mktemp -d /tmp/s3cachefs-offline.XXXXXX)
SERVER_PID=
cleanup() {
    set +e
    [ -n "$SERVER_PID" ] && kill -CONT "$SERVER_PID" 2>/dev/null && kill "$SERVER_PID" 2>/dev/null
    mountpoint -q "$WORK/mnt" && { "$BIN" unmount "$WORK/mnt" >/dev/null 2>&1 || umount -l "$WORK/mnt"; }
    rm -rf "$WORK"
}
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=test-access-key AWS_SECRET_ACCESS_KEY=test-secret-key
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
mkdir -p "$WORK/objects/bkt/dir" "$WORK/mnt"
head -c 5000000 /dev/urandom >"$WORK/objects/bkt/dir/cached.bin"
head -c 5000000 /dev/urandom >"$WORK/objects/bkt/dir/cold.bin"

start_server() {
    "$SERVER" --root "$WORK/objects" --port "${1:-0}" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do grep -q 'http://127.0.0.1:' "$WORK/server.log" && break; sleep 0.05; done
    ENDPOINT=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/server.log" | head -1)
}

# t LABEL CMD...: prints LABEL, the seconds CMD took and whether it succeeded; gives up
# after CAP seconds (an old binary may wait minutes).
CAP=60
t() {
    local label=$1 start end rc=0 how
    shift
    start=$(date +%s.%N)
    timeout -k 5 "$CAP" "$@" >/dev/null 2>&1 || rc=$?
    end=$(date +%s.%N)
    case $rc in 0) how=ok ;; 124|137) how="still waiting after $CAP s: killed" ;; *) how="failed (exit $rc)" ;; esac
    printf '%-8s %-20s %8.3f s  %s\n' "$MODE" "$label" "$(echo "$end - $start" | bc)" "$how"
}

for MODE in stopped frozen; do
    start_server
    "$BIN" mount "$WORK/mnt" --endpoint-url "$ENDPOINT" --force-path-style --bucket bkt \
        --cache-dir "$WORK/cache-$MODE" --metadata-ttl 1 --read-timeout 10 \
        --readahead-files 0 --log-file "$WORK/mount-$MODE.log"
    cat "$WORK/mnt/dir/cached.bin" >/dev/null
    ls -l "$WORK/mnt/dir" >/dev/null
    sleep 1
    if [ "$MODE" = stopped ]; then kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
    else kill -STOP "$SERVER_PID"; fi
    sleep 1.5   # the listing and the HEAD result go stale
    t "cat cached (1st)" cat "$WORK/mnt/dir/cached.bin"
    t "cat cached (2nd)" cat "$WORK/mnt/dir/cached.bin"
    t "ls -l (1st)" ls -l "$WORK/mnt/dir"
    t "ls -l (2nd)" ls -l "$WORK/mnt/dir"
    t "cat uncached (1st)" cat "$WORK/mnt/dir/cold.bin"
    t "cat uncached (2nd)" cat "$WORK/mnt/dir/cold.bin"
    if [ -n "$SERVER_PID" ]; then kill -CONT "$SERVER_PID"; kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; fi
    timeout 30 "$BIN" unmount "$WORK/mnt" >/dev/null 2>&1 || umount -l "$WORK/mnt"
    sleep 0.5
done
