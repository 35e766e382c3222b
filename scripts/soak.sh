#!/usr/bin/env bash
# Soak test (not run in CI): many concurrent readers doing random ranged reads of many
# objects through an s3cachefs mount for a set time, while the local S3 server
# (examples/s3server.rs --faults) injects errors: 500 / 503 SlowDown, bodies cut off part
# way, a stalled body now and then, latency spikes. Every read is checked against the
# source file's bytes.
#
# It prints reads done, errors returned (EIO etc.), wrong bytes (must be 0), read
# latencies, the peak RSS of the s3cachefs process (VmHWM), and the cache's final and peak
# size against its limits. Exit status 1 when any byte was wrong, a read hung, the cache
# went over its limits or its files disagree with its index, or the mount logged a panic.
#
# Sets everything up itself (release build, objects, server, mount) and cleans up on any
# exit: unmounts, stops the server and the mount, removes the work dir (keeps the logs of a
# failed run). Needs root (FUSE), python3, fuse3, and ~1 GiB of free disk for the defaults.
set -euo pipefail
shopt -s inherit_errexit

usage() {
    cat <<'EOF'
usage: scripts/soak.sh [options]

  --duration SECONDS     how long the readers read (default 600)
  --threads N            concurrent reader threads (default 16)
  --objects N            objects to create (default 200)
  --min-kib KIB          smallest object (default 64)
  --max-mib MIB          largest object (default 16); sizes are log-uniform in between
  --cache-max-size-mb MB cache size limit (default 256)
  --cache-max-entries N  cache entry limit (default 100)
  --read-timeout SECONDS the mount's --read-timeout (default 30)
  --latency MS           latency the server adds to every request (default 0)
  --seed N               seed of the objects, the readers and the faults (default: random)
  --fault-interval-ms MS how often the server changes the fault it injects (default 3000)
  --no-faults            no fault injection
  --overwrite-every S    replace a random object with a new version (a PUT) every S seconds;
                         each open must read one version whole (default 0: never)
  --no-passthrough       mount with --passthrough false (reads of cached files go through
                         s3cachefs instead of the kernel reading the cache file directly)
  --shared               also a shared cache tier, on a second server (with faults of its
                         own unless --no-faults): what the cache evicts comes back from it
  --work-dir DIR         where objects, cache, mountpoint and logs go (default: new dir in /var/tmp)
  --keep                 keep the work dir afterwards
  --no-build             use the binaries already in target/release
  -h, --help             this text
EOF
}

die() { echo "soak.sh: $*" >&2; exit 2; }
say() { echo "==> $*"; }

DURATION=600
THREADS=16
OBJECTS=200
MIN_KIB=64
MAX_MIB=16
MAX_SIZE_MB=256
MAX_ENTRIES=100
READ_TIMEOUT=30
LATENCY=0
SEED=
FAULT_INTERVAL_MS=3000
FAULTS=1
SHARED=0
PASSTHROUGH=true
OVERWRITE_EVERY=0
WORK=
KEEP=0
BUILD=1
num() { [[ ${2:-} =~ ^[0-9]+$ ]] || die "$1: a whole number, not '${2:-}'"; echo "$2"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$(num "$1" "${2:-}"); shift 2 ;;
        --threads) THREADS=$(num "$1" "${2:-}"); shift 2 ;;
        --objects) OBJECTS=$(num "$1" "${2:-}"); shift 2 ;;
        --min-kib) MIN_KIB=$(num "$1" "${2:-}"); shift 2 ;;
        --max-mib) MAX_MIB=$(num "$1" "${2:-}"); shift 2 ;;
        --cache-max-size-mb) MAX_SIZE_MB=$(num "$1" "${2:-}"); shift 2 ;;
        --cache-max-entries) MAX_ENTRIES=$(num "$1" "${2:-}"); shift 2 ;;
        --read-timeout) READ_TIMEOUT=$(num "$1" "${2:-}"); shift 2 ;;
        --latency) LATENCY=$(num "$1" "${2:-}"); shift 2 ;;
        --seed) SEED=$(num "$1" "${2:-}"); shift 2 ;;
        --fault-interval-ms) FAULT_INTERVAL_MS=$(num "$1" "${2:-}"); shift 2 ;;
        --no-faults) FAULTS=0; shift ;;
        --overwrite-every) OVERWRITE_EVERY=$(num "$1" "${2:-}"); shift 2 ;;
        --no-passthrough) PASSTHROUGH=false; shift ;;
        --shared) SHARED=1; shift ;;
        --work-dir) WORK=${2:?--work-dir needs a directory}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
if [ "$THREADS" -lt 1 ] || [ "$OBJECTS" -lt 1 ] || [ "$MIN_KIB" -lt 1 ]; then
    die "--threads, --objects and --min-kib must be at least 1"
fi
[ $((MAX_MIB * 1024)) -ge "$MIN_KIB" ] || die "--max-mib must not be below --min-kib"
[ -n "$SEED" ] || SEED=$(( (RANDOM << 15) | RANDOM ))
case "$WORK" in ''|/*) ;; *) WORK=$PWD/$WORK ;; esac

cd "$(dirname "$0")/.."
REPO=$PWD

[ "$(id -u)" = 0 ] || die "run as root: it mounts a FUSE filesystem"
[ -e /dev/fuse ] || die "/dev/fuse is missing: FUSE is needed"
command -v python3 >/dev/null 2>&1 || die "python3 is needed"
if ! command -v fusermount3 >/dev/null 2>&1; then
    say "installing fuse3"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null
fi

# ------------------------------------------------------------------ work dir, cleanup

if [ -z "$WORK" ]; then
    WORK=$(mktemp -d /var/tmp/s3cachefs-soak.XXXXXX)
else
    mkdir -p "$WORK"
    [ -z "$(ls -A "$WORK")" ] || die "--work-dir $WORK is not empty"
fi
SRC_ROOT=$WORK/root
BUCKET=soak
MNT=$WORK/mnt
CACHE=$WORK/cache
LOGS=$WORK/logs
mkdir -p "$SRC_ROOT" "$MNT" "$LOGS" "$WORK/bin"
SERVER_PID=
TIER_PID=
MOUNT_PID=
SOAK_PID=
BIN=$WORK/bin/s3cachefs

# Unmounts, stops the mount process and the server (by their pids), removes the work dir.
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +eu
    trap - EXIT INT TERM
    if [ -n "$SOAK_PID" ]; then
        kill "$SOAK_PID" 2>/dev/null
        wait "$SOAK_PID" 2>/dev/null
    fi
    if mountpoint -q "$MNT" 2>/dev/null; then
        "$BIN" unmount "$MNT" 2>/dev/null || fusermount3 -u "$MNT" 2>/dev/null
    fi
    if [ -n "$MOUNT_PID" ] && kill -0 "$MOUNT_PID" 2>/dev/null; then
        for _ in $(seq 1 100); do kill -0 "$MOUNT_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$MOUNT_PID" 2>/dev/null; then
            say "s3cachefs (pid $MOUNT_PID) still running after unmount: SIGTERM"
            kill -TERM "$MOUNT_PID" 2>/dev/null
            for _ in $(seq 1 50); do kill -0 "$MOUNT_PID" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$MOUNT_PID" 2>/dev/null
        fi
    fi
    if mountpoint -q "$MNT" 2>/dev/null; then
        # A dead process leaves its mountpoint busy: detach it.
        fusermount3 -uz "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
    fi
    for pid in $SERVER_PID $TIER_PID; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if mountpoint -q "$MNT" 2>/dev/null; then
        say "$MNT is still mounted; left $WORK in place"
    elif [ "$KEEP" = 1 ]; then
        say "kept $WORK"
    elif [ "$rc" != 0 ]; then
        [ -f "$CACHE/s3cachefs.log" ] && cp "$CACHE/s3cachefs.log" "$LOGS/"
        find "$WORK" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
        say "exit status $rc; logs kept in $LOGS"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ build

if [ "$BUILD" = 1 ]; then
    say "building (release)"
    cargo build --release --locked --bin s3cachefs --example s3server
fi
# Copies, so a rebuild in the same tree during the run cannot swap binaries under us.
cp target/release/s3cachefs target/release/examples/s3server "$WORK/bin/" ||
    die "no release binaries in target/release (run without --no-build)"

# ------------------------------------------------------------------ objects, server, mount

say "objects (seed $SEED)"
python3 "$REPO/scripts/soak.py" gen "$SRC_ROOT" "$BUCKET" "$OBJECTS" \
    $((MIN_KIB * 1024)) $((MAX_MIB * 1024 * 1024)) "$SEED"

# start_server NAME ROOT SEED: a local S3 server serving ROOT (injecting faults seeded with
# SEED, unless --no-faults), logging to $LOGS/NAME.log; sets STARTED_PID and STARTED_ENDPOINT.
start_server() {
    local args=(--root "$2" --port 0 --latency "$LATENCY")
    if [ "$FAULTS" = 1 ]; then
        args+=(--faults --fault-seed "$3" --fault-interval-ms "$FAULT_INTERVAL_MS")
    fi
    "$WORK/bin/s3server" "${args[@]}" >"$LOGS/$1.log" 2>&1 &
    STARTED_PID=$!
    STARTED_ENDPOINT=
    for _ in $(seq 1 100); do
        STARTED_ENDPOINT=$(grep -o 'http://127.0.0.1:[0-9]*' "$LOGS/$1.log" 2>/dev/null | head -1 || true)
        [ -n "$STARTED_ENDPOINT" ] && return
        kill -0 "$STARTED_PID" 2>/dev/null || { cat "$LOGS/$1.log" >&2; die "the $1 server exited"; }
        sleep 0.05
    done
    die "the $1 server printed no endpoint (see $LOGS/$1.log)"
}

say "S3 server on 127.0.0.1"
start_server server "$SRC_ROOT" "$SEED"
SERVER_PID=$STARTED_PID
ENDPOINT=$STARTED_ENDPOINT
echo "    $ENDPOINT$([ "$FAULTS" = 1 ] && echo ", a new fault every $FAULT_INTERVAL_MS ms")"

SHARED_ARGS=()
if [ "$SHARED" = 1 ]; then
    say "shared cache tier: a second S3 server on 127.0.0.1"
    mkdir -p "$WORK/tier/tier"
    start_server tier "$WORK/tier" "$((SEED + 1))"
    TIER_PID=$STARTED_PID
    TIER=$STARTED_ENDPOINT
    echo "    $TIER"
    SHARED_ARGS=(--shared-cache s3://tier/soak --shared-endpoint-url "$TIER")
fi

export AWS_ACCESS_KEY_ID=test-access-key AWS_SECRET_ACCESS_KEY=test-secret-key
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_CA_BUNDLE AWS_ENDPOINT_URL AWS_SESSION_TOKEN

say "s3cachefs mount (cache limits $MAX_SIZE_MB MiB, $MAX_ENTRIES entries; read timeout $READ_TIMEOUT s; passthrough $PASSTHROUGH)"
"$BIN" mount "$MNT" --endpoint-url "$ENDPOINT" --force-path-style \
    --cache-dir "$CACHE" --cache-max-size-mb "$MAX_SIZE_MB" --cache-max-entries "$MAX_ENTRIES" \
    --metadata-ttl 5 --read-timeout "$READ_TIMEOUT" --passthrough "$PASSTHROUGH" --log-file "$LOGS/s3cachefs.log" \
    "${SHARED_ARGS[@]}"
# The mount process holds the cache dir's lock file, which names it.
MOUNT_PID=$(tr -dc '0-9' <"$CACHE/.lock" 2>/dev/null || true)
if ! [[ $MOUNT_PID =~ ^[0-9]+$ ]] || ! kill -0 "$MOUNT_PID" 2>/dev/null; then
    die "cannot find the s3cachefs process (no pid in $CACHE/.lock)"
fi
[ -d "$MNT/$BUCKET" ] || die "$MNT/$BUCKET is not there"
echo "    pid $MOUNT_PID"

# ------------------------------------------------------------------ soak

say "$THREADS readers for $DURATION s$([ "$FAULTS" = 1 ] && echo " with faults")"
# In the background with `wait`, so a signal to this script is handled at once (the trap
# stops the readers, then cleans up).
python3 "$REPO/scripts/soak.py" run \
    --mnt-root "$MNT" --mnt "$MNT/$BUCKET" --src "$SRC_ROOT/$BUCKET" \
    --cache-dir "$CACHE" --pid "$MOUNT_PID" \
    --server-log "$LOGS/server.log" --mount-log "$LOGS/s3cachefs.log" \
    --duration "$DURATION" --threads "$THREADS" --seed "$SEED" \
    --read-timeout "$READ_TIMEOUT" \
    --max-size-mb "$MAX_SIZE_MB" --max-entries "$MAX_ENTRIES" \
    --overwrite-every "$OVERWRITE_EVERY" --endpoint "$ENDPOINT" --bucket "$BUCKET" \
    --versions-dir "$WORK/versions" &
SOAK_PID=$!
rc=0
wait "$SOAK_PID" || rc=$?
SOAK_PID=
echo "    seed $SEED (--seed $SEED repeats the objects, readers and faults)"
exit "$rc"
