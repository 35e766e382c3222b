#!/usr/bin/env bash
# What scraping /metrics costs: sequential hit throughput of a large cached file read
# through a mount without metrics, through one with metrics nobody scrapes, and through
# the same one while another process scrapes /metrics every 10 ms, measured in turn
# within one run, several rounds (alternating order), medians and ratios
# (scripts/metrics-overhead.py).
#
# Two read paths, each with its own pair of mounts:
#   passthrough  the default where the kernel offers it: the kernel reads the cache file
#                itself, so scraping can only cost CPU time the reader would have used;
#   fuse         --passthrough false, the file's pages dropped before each pass: every
#                read is answered by s3cachefs and timed into the read-latency histogram.
#
# Sets everything up itself (release build, object, local S3 server, mounts) and cleans
# up on any exit. Needs root (FUSE), python3, fuse3, and twice --size-mb of free disk
# (plus the object).
set -euo pipefail
shopt -s inherit_errexit

usage() {
    cat <<'USAGE'
usage: scripts/metrics-overhead.sh [options]

  --size-mb MB       size of the cached file (default 512)
  --runs N           rounds; the ratios are of medians (default 5)
  --seconds S        length of each measurement (default 5)
  --interval-ms MS   scrape interval (default 10)
  --modes LIST       passthrough,fuse (default both)
  --work-dir DIR     where the object, caches and mountpoints go (default: new dir in /var/tmp)
  --keep             keep the work dir afterwards
  --no-build         use the binaries already built (target/release, or $CARGO_TARGET_DIR)
  -h, --help         this text
USAGE
}

die() { echo "metrics-overhead.sh: $*" >&2; exit 2; }
say() { echo "==> $*"; }
num() { [[ ${2:-} =~ ^[0-9]+$ ]] || die "$1: a whole number, not '${2:-}'"; echo "$2"; }

SIZE_MB=512
RUNS=5
SECONDS_EACH=5
INTERVAL_MS=10
MODES=passthrough,fuse
WORK=
KEEP=0
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --size-mb) SIZE_MB=$(num "$1" "${2:-}"); shift 2 ;;
        --runs) RUNS=$(num "$1" "${2:-}"); shift 2 ;;
        --seconds) SECONDS_EACH=$(num "$1" "${2:-}"); shift 2 ;;
        --interval-ms) INTERVAL_MS=$(num "$1" "${2:-}"); shift 2 ;;
        --modes) MODES=${2:?--modes needs a list}; shift 2 ;;
        --work-dir) WORK=${2:?--work-dir needs a directory}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
case "$WORK" in ''|/*) ;; *) WORK=$PWD/$WORK ;; esac

cd "$(dirname "$0")/.."
REPO=$PWD
TARGET=${CARGO_TARGET_DIR:-$REPO/target}

[ "$(id -u)" = 0 ] || die "run as root: it mounts FUSE filesystems"
[ -e /dev/fuse ] || die "/dev/fuse is missing: FUSE is needed"
command -v python3 >/dev/null 2>&1 || die "python3 is needed"
command -v curl >/dev/null 2>&1 || die "curl is needed"
if ! command -v fusermount3 >/dev/null 2>&1; then
    say "installing fuse3"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null
fi

if [ -z "$WORK" ]; then
    WORK=$(mktemp -d /var/tmp/s3cachefs-metrics.XXXXXX)
else
    mkdir -p "$WORK"
    [ -z "$(ls -A "$WORK")" ] || die "--work-dir $WORK is not empty"
fi
BIN=$WORK/bin/s3cachefs
SERVER_PID=
mkdir -p "$WORK/objects/bench" "$WORK/bin" "$WORK/logs"

unmount_all() {
    local m
    for m in "$WORK"/mnt-*; do
        [ -d "$m" ] || continue
        if mountpoint -q "$m" 2>/dev/null; then
            "$BIN" unmount "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || umount -l "$m"
        fi
    done
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +eu
    trap - EXIT INT TERM
    unmount_all
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
        rm -rf "$WORK/objects" "$WORK"/cache-*
        say "exit status $rc; logs in $WORK/logs"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$BUILD" = 1 ]; then
    say "building (release)"
    cargo build --release --locked --bin s3cachefs --example s3server
fi
cp "$TARGET/release/s3cachefs" "$TARGET/release/examples/s3server" "$WORK/bin/" ||
    die "no release binaries in $TARGET/release (run without --no-build)"

say "a $SIZE_MB MiB object, the S3 server on 127.0.0.1"
"$WORK/bin/s3server" --root "$WORK/objects" --port 0 >"$WORK/logs/server.log" 2>&1 &
SERVER_PID=$!
ENDPOINT=
for _ in $(seq 1 100); do
    ENDPOINT=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/logs/server.log" 2>/dev/null | head -1 || true)
    [ -n "$ENDPOINT" ] && break
    sleep 0.05
done
[ -n "$ENDPOINT" ] || die "the server printed no endpoint (see $WORK/logs/server.log)"
# In with a PUT, so the server keeps its MD5 ETag; a file written straight into its
# directory would be hashed whole on every HEAD and GET.
head -c $((SIZE_MB << 20)) /dev/urandom >"$WORK/big.src"
curl -sS -f --noproxy '*' -T "$WORK/big.src" "$ENDPOINT/bench/big.bin" -o /dev/null
rm -f "$WORK/big.src"

export AWS_ACCESS_KEY_ID=test-access-key AWS_SECRET_ACCESS_KEY=test-secret-key
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_CA_BUNDLE AWS_ENDPOINT_URL AWS_SESSION_TOKEN

stat_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1/.cache-stats" "$2"; }

# mount NAME PASSTHROUGH [FLAGS...]: mounts $WORK/mnt-NAME and fills its cache with the file.
mount_warm() {
    local name=$1 pt=$2
    shift 2
    mkdir -p "$WORK/mnt-$name"
    "$BIN" mount "$WORK/mnt-$name" --bucket bench --endpoint-url "$ENDPOINT" --force-path-style \
        --cache-dir "$WORK/cache-$name" --cache-max-size-mb $((SIZE_MB * 2 + 64)) \
        --fill-concurrency 4 --passthrough "$pt" --log-file "$WORK/logs/$name.log" "$@"
    # A download can fail on a busy machine (the local server is slow to answer a part):
    # read it again until it is cached.
    local try
    for try in 1 2 3; do
        cat "$WORK/mnt-$name/big.bin" >/dev/null
        for _ in $(seq 1 300); do
            [ "$(stat_of "$WORK/mnt-$name" downloads_in_flight)" = 0 ] && break
            sleep 0.1
        done
        [ "$(stat_of "$WORK/mnt-$name" entry_count)" = 1 ] && return 0
        say "$name: not cached after read $try; reading it again"
    done
    die "$name: the file never landed in the cache (see $WORK/logs/$name.log)"
}

pid_of() { tr -dc '0-9' <"$WORK/cache-$1/.lock"; }

IFS=, read -r -a modes <<<"$MODES"
for mode in "${modes[@]}"; do
    case "$mode" in
        passthrough) pt=true drop=() ;;
        fuse) pt=false drop=(--drop-pages) ;;
        *) die "--modes: passthrough or fuse, not $mode" ;;
    esac
    say "$mode: mounts with and without --metrics-addr, $SIZE_MB MiB cached in each"
    mount_warm "$mode-off" "$pt"
    mount_warm "$mode-on" "$pt" --metrics-addr 127.0.0.1:0 --metrics-label bench=overhead
    addr=$(stat_of "$WORK/mnt-$mode-on" metrics_addr)
    say "$mode: $RUNS rounds of $SECONDS_EACH s each (scraping http://$addr/metrics every $INTERVAL_MS ms in the third)"
    python3 "$REPO/scripts/metrics-overhead.py" run \
        --off "$WORK/mnt-$mode-off" --on "$WORK/mnt-$mode-on" --addr "$addr" \
        --file big.bin --runs "$RUNS" --seconds "$SECONDS_EACH" --interval-ms "$INTERVAL_MS" \
        --pid-off "$(pid_of "$mode-off")" --pid-on "$(pid_of "$mode-on")" "${drop[@]}" |
        tee "$WORK/logs/$mode.txt"
    unmount_all
    rm -rf "$WORK/cache-$mode-off" "$WORK/cache-$mode-on"
done
