#!/usr/bin/env bash
# The shared cache tier, measured: N mounts ("hosts", each with its own cache dir) read
# the same big object and the same small files in turn, through one shared tier. The
# origin server adds --origin-latency ms to every request (a region away), the tier's
# server --tier-latency ms (the same zone). Per host: the origin's GETs and bytes (the
# server's own counters), first byte and MB/s of the big object, small files/s; and a
# local hit on host 1 for comparison. Prints medians over --runs and the targets:
#   origin bytes of all hosts <= 1.05x host 1's;
#   hosts 2..N first byte <= 0.25x host 1's, sequential >= 0.9x host 1's.
#
# Needs root (FUSE mounts, dropping the page cache). Builds the release binaries unless
# --no-build. Cleans up (unmounts, stops the servers, removes the work dir) on exit.
set -euo pipefail
shopt -s inherit_errexit

usage() {
    cat <<'EOF'
usage: scripts/fleet-bench.sh [options]

  --fleet N            hosts (default 3)
  --runs N             runs of the whole sequence; the table shows medians (default 3)
  --big-mib N          size of the big object (default 1024)
  --small N            small objects of 64 KiB (default 1000)
  --origin-latency MS  latency of the origin server (default 20)
  --tier-latency MS    latency of the shared tier's server (default 1)
  --work-dir DIR       where data, caches and mountpoints go (default: under /var/tmp)
  --no-build           use the binaries in target/release
  -h, --help           this text
EOF
}

die() { echo "fleet-bench.sh: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

FLEET=3 RUNS=3 BIG_MIB=1024 SMALL=1000 ORIGIN_LAT=20 TIER_LAT=1 WORK= BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --fleet) FLEET=${2:?}; shift 2 ;;
        --runs) RUNS=${2:?}; shift 2 ;;
        --big-mib) BIG_MIB=${2:?}; shift 2 ;;
        --small) SMALL=${2:?}; shift 2 ;;
        --origin-latency) ORIGIN_LAT=${2:?}; shift 2 ;;
        --tier-latency) TIER_LAT=${2:?}; shift 2 ;;
        --work-dir) WORK=${2:?}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
for v in FLEET RUNS BIG_MIB SMALL ORIGIN_LAT TIER_LAT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v: a whole number, not '${!v}'"
done
[ "$FLEET" -ge 2 ] || die "--fleet: at least 2 hosts"
[ "$(id -u)" = 0 ] || die "run as root: it mounts FUSE filesystems and drops the page cache"

cd "$(dirname "$0")/.."
REPO=$PWD
BENCH_PY=$REPO/scripts/bench.py
[ -n "$WORK" ] || WORK=$(mktemp -d /var/tmp/s3cachefs-fleet.XXXXXX)
mkdir -p "$WORK"/{bin,origin/bench,tier/tier,logs,data}
PIDS=()
MOUNTS=()
cleanup() {
    for m in "${MOUNTS[@]}"; do "$WORK/bin/s3cachefs" unmount "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$BUILD" = 1 ]; then
    say "building (release)"
    cargo build --release --locked --bin s3cachefs --example s3server
fi
cp target/release/s3cachefs target/release/examples/s3server "$WORK/bin/"
BIN=$WORK/bin/s3cachefs

export AWS_ACCESS_KEY_ID=test-access-key AWS_SECRET_ACCESS_KEY=test-secret-key
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=$WORK/aws-config AWS_SHARED_CREDENTIALS_FILE=$WORK/aws-credentials
unset AWS_PROFILE AWS_ENDPOINT_URL
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
: >"$AWS_CONFIG_FILE"; : >"$AWS_SHARED_CREDENTIALS_FILE"

# start_server NAME ROOT LATENCY: sets ENDPOINT.
start_server() {
    "$WORK/bin/s3server" --root "$2" --port 0 --latency "$3" >"$WORK/logs/$1.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 200); do
        grep -q 'http://127.0.0.1:' "$WORK/logs/$1.log" && break
        sleep 0.05
    done
    ENDPOINT=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/logs/$1.log" | head -1)
    [ -n "$ENDPOINT" ] || die "$1 server did not start: $(cat "$WORK/logs/$1.log")"
}
http() { curl -sS -f --noproxy '*' "$@"; }
py() { python3 "$BENCH_PY" "$@"; }
# The page cache only: the names stay known, as after the `ls` a user does first, so the
# first byte measures the data path. (Dropping dentries too makes every host, and every
# local hit, pay one LIST of the origin first: about 20 ms more on each alike.)
drop_caches() { sync; echo 1 >/proc/sys/vm/drop_caches; }

say "test data: ${BIG_MIB} MiB object, $SMALL x 64 KiB objects"
head -c $((BIG_MIB << 20)) /dev/urandom >"$WORK/data/big.bin"
py mkfiles "$WORK/data/small" "$SMALL" 65536
# Everything goes in with a PUT, so the server records each ETag (listings carry them, as
# S3's do), through a server without latency; then the origin serves with its latency.
start_server load "$WORK/origin" 0
http -T "$WORK/data/big.bin" "$ENDPOINT/bench/big.bin" -o /dev/null
for f in "$WORK"/data/small/*; do http -T "$f" "$ENDPOINT/bench/small/${f##*/}" -o /dev/null; done
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
start_server origin "$WORK/origin" "$ORIGIN_LAT"; ORIGIN=$ENDPOINT
start_server tier "$WORK/tier" "$TIER_LAT"; TIER=$ENDPOINT
say "origin $ORIGIN (${ORIGIN_LAT} ms), tier $TIER (${TIER_LAT} ms)"

counters() { http "$ORIGIN/__counters"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
stat_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1/.cache-stats" "$2"; }

# Waits until a host has no download under way and no upload waiting.
settle() {
    for _ in $(seq 1 1200); do
        [ "$(stat_of "$1" downloads_in_flight)" = 0 ] && [ "$(stat_of "$1" shared_uploads_pending)" = 0 ] && return
        sleep 0.1
    done
    die "$1 did not settle"
}

RAW=$WORK/raw.tsv
: >"$RAW"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RAW"; }

for run in $(seq 1 "$RUNS"); do
    for h in $(seq 1 "$FLEET"); do
        mnt=$WORK/mnt/r$run-h$h
        mkdir -p "$mnt"
        "$BIN" mount "$mnt" --endpoint-url "$ORIGIN" --force-path-style \
            --cache-dir "$WORK/cache/r$run-h$h" --cache-max-size-mb $((BIG_MIB + 512)) \
            --cache-max-entries $((SMALL + 100)) \
            --shared-cache "s3://tier/run$run" --shared-endpoint-url "$TIER" >/dev/null
        MOUNTS+=("$mnt")
        ls "$mnt/bench" "$mnt/bench/small" >/dev/null   # names and ETags, as a user's ls
        before=$(counters)
        drop_caches
        read -r ttfb mbs <<<"$(py seq "$mnt/bench/big.bin")"
        files=$(py small "$mnt/bench/small" "$WORK/data/small")
        settle "$mnt"
        after=$(counters)
        gets=$(( $(field "$after" get) - $(field "$before" get) ))
        bytes=$(( $(field "$after" get_bytes) - $(field "$before" get_bytes) ))
        say "run $run host $h: first byte ${ttfb} ms, ${mbs} MB/s, ${files} files/s; origin: $gets GETs, $bytes bytes; tier hits $(stat_of "$mnt" shared_hits), uploads $(stat_of "$mnt" shared_uploads)"
        py verify "$WORK/data/big.bin" "$mnt/bench/big.bin" >/dev/null || die "host $h: wrong bytes"
        role=$([ "$h" = 1 ] && echo host1 || echo others)
        record "$role" ttfb_ms "$ttfb"; record "$role" mbs "$mbs"; record "$role" files_s "$files"
        record "h$h" origin_gets "$gets"; record "h$h" origin_bytes "$bytes"
        if [ "$h" = 1 ]; then
            drop_caches
            read -r ttfb mbs <<<"$(py seq "$mnt/bench/big.bin")"
            record local ttfb_ms "$ttfb"; record local mbs "$mbs"
        fi
    done
    for m in "${MOUNTS[@]}"; do "$BIN" unmount "$m" >/dev/null; done
    MOUNTS=()
    rm -rf "$WORK/cache" "$WORK/tier/tier/run$run"
done

python3 - "$RAW" "$FLEET" <<'PY'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    who, metric, v = line.rstrip("\n").split("\t")
    rows[(who, metric)].append(float(v))
fleet = int(sys.argv[2])
med = lambda k: statistics.median(rows[k]) if rows[k] else float("nan")
print(f"\nmedians of {len(rows[('host1', 'mbs')])} runs, {fleet} hosts")
print(f"{'':34}{'host 1 (cold)':>16}{'hosts 2-%d (tier)' % fleet:>18}{'local hit':>12}")
for metric, label in [("ttfb_ms", "first byte, big object (ms)"), ("mbs", "sequential (MB/s)"), ("files_s", "small files (files/s)")]:
    loc = med(("local", metric)) if metric != "files_s" else float("nan")
    print(f"{label:34}{med(('host1', metric)):16.1f}{med(('others', metric)):18.1f}{loc:12.1f}")
print("\norigin per host:   " + "   ".join(f"h{h}: {med((f'h{h}', 'origin_gets')):.0f} GETs, {med((f'h{h}', 'origin_bytes')) / 2**20:.1f} MiB" for h in range(1, fleet + 1)))
total = sum(med((f"h{h}", "origin_bytes")) for h in range(1, fleet + 1))
one = med(("h1", "origin_bytes"))
r_bytes = total / one
r_ttfb = med(("others", "ttfb_ms")) / med(("host1", "ttfb_ms"))
r_seq = med(("others", "mbs")) / med(("host1", "mbs"))
ok = lambda b: "met" if b else "MISSED"
print(f"origin bytes, all hosts / host 1: {r_bytes:.3f}x (target <= 1.05: {ok(r_bytes <= 1.05)})")
print(f"first byte, hosts 2-{fleet} / host 1:  {r_ttfb:.3f}x (target <= 0.25: {ok(r_ttfb <= 0.25)})")
print(f"sequential, hosts 2-{fleet} / host 1:  {r_seq:.2f}x (target >= 0.9: {ok(r_seq >= 0.9)})")
PY
