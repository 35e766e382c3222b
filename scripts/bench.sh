#!/usr/bin/env bash
# Benchmarks s3cachefs against the peers a user would pick instead (rclone mount with
# --vfs-cache-mode full, s3fs with use_cache, and mountpoint-s3 when `mount-s3` is on the
# PATH) and against the limits (the same bytes from local disk, plain GETs from the same
# server), all measured side by side in one run, and prints ONE table of medians and ratios.
#
# It sets everything up itself: installs what is missing (Debian packages), builds the
# release binaries, writes the test data, starts the local S3-protocol server
# (examples/s3server.rs) that every tool talks to, mounts, measures, and on exit (even on
# failure or Ctrl-C) unmounts everything and stops the server.
#
# Needs root: it mounts FUSE filesystems and drops the page cache between measurements.
# A full run takes about 10 minutes on a 2-core machine and needs ~4.5 GiB of free disk.
set -euo pipefail
shopt -s inherit_errexit

usage() {
    cat <<'EOF'
usage: scripts/bench.sh [options]

  --runs N         runs of every measurement; the table shows medians (default 3; 1 with --quick)
  --latency MS     latency the S3 server adds to every request (default 0)
  --only T,...     tools to measure: s3cachefs, rclone, s3fs, mount-s3 (default: all available)
  --quick          256 MiB big object and a 10 s MP4, for trying the script out
  --json FILE      where to write every sample, the medians and the ratios as JSON
                   (default target/bench/bench-<date>.json)
  --work-dir DIR   where data, caches and mountpoints go (default: a new dir under /var/tmp;
                   it must be on a real disk, not tmpfs, for the local-disk limits to mean anything)
  --keep           keep the work dir (data, caches, logs) afterwards
  --no-build       use the binaries already in target/release
  -h, --help       this text

Exit status 1 if any tool failed (the table still shows the others; logs are kept).
EOF
}

die() { echo "bench.sh: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

# ------------------------------------------------------------------ options

RUNS=
LATENCY=0
ONLY=
QUICK=0
JSON_OUT=
WORK=
KEEP=0
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --latency) LATENCY=${2:?--latency needs milliseconds}; shift 2 ;;
        --only) ONLY=${2:?--only needs a list of tools}; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --json) JSON_OUT=${2:?--json needs a file}; shift 2 ;;
        --work-dir) WORK=${2:?--work-dir needs a directory}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
# Relative paths are the caller's: make them absolute before changing directory.
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[ -z "$JSON_OUT" ] || JSON_OUT=$(abspath "$JSON_OUT")
[ -z "$WORK" ] || WORK=$(abspath "$WORK")
[[ $LATENCY =~ ^[0-9]+$ ]] || die "--latency: a whole number of milliseconds, not '$LATENCY'"
if [ -z "$RUNS" ]; then
    if [ "$QUICK" = 1 ]; then RUNS=1; else RUNS=3; fi
fi
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs: a whole number from 1, not '$RUNS'"

if [ "$QUICK" = 1 ]; then
    BIG_MIB=256
    MP4_SECONDS=10
else
    BIG_MIB=1024
    MP4_SECONDS=60
fi
BIG_BYTES=$((BIG_MIB * 1024 * 1024))
SMALL_COUNT=1000
SMALL_SIZE=65536
MIB_BYTES=1048576   # one object of 1 MiB beside the big one: first byte must not grow with size
RAND_READS=20000    # 4 KiB preads per random-read measurement (2,000 take a few ms: noise)
KEPT_READS=3        # reads per run with the page cache kept: one takes ~50 ms, so noisy
# Reads per run with the page cache dropped before each. On a VM the first read of blocks
# the guest just wrote can be much slower than later ones (host storage; freed guest pages
# handed back to the host), while the local-disk file has been read many times. So the
# first read after the fill is its own row, and the row compared with the disk is the
# median of all of them, measured the same way for the disk.
DROPPED_READS=3
RANGED_GETS=20      # 4 KiB ranged GETs per run for the first-byte limit
LISTS=5             # LIST requests per run for the ls limit
NOCACHE_PASSES=4    # reads of the big object through a --no-cache mount (4 GiB in full mode)
BUCKET=bench
STEP_TIMEOUT=900    # seconds one measurement may take before it counts as hung

cd "$(dirname "$0")/.."
REPO=$PWD
BENCH_PY=$REPO/scripts/bench.py

[ "$(id -u)" = 0 ] || die "run as root: it mounts FUSE filesystems and drops the page cache"
[ -e /dev/fuse ] || die "/dev/fuse is missing: FUSE is needed"
[ -w /proc/sys/vm/drop_caches ] || die "/proc/sys/vm/drop_caches is not writable (a container?): cold numbers would be warm"

# ------------------------------------------------------------------ tools

ALL_TOOLS=(s3cachefs rclone s3fs mount-s3)
TOOLS=()
if [ -n "$ONLY" ]; then
    IFS=, read -r -a TOOLS <<<"$ONLY"
    for t in "${TOOLS[@]}"; do
        case " ${ALL_TOOLS[*]} " in *" $t "*) ;; *) die "--only: unknown tool '$t' (known: ${ALL_TOOLS[*]})" ;; esac
    done
    if [[ " ${TOOLS[*]} " == *" mount-s3 "* ]] && ! command -v mount-s3 >/dev/null 2>&1; then
        die "--only mount-s3: no mount-s3 on the PATH (it is not a Debian package)"
    fi
else
    TOOLS=(s3cachefs rclone s3fs)
    # mountpoint-s3 is no Debian package: measured only when already installed.
    if command -v mount-s3 >/dev/null 2>&1; then TOOLS+=(mount-s3); fi
fi
has_tool() { [[ " ${TOOLS[*]} " == *" $1 "* ]]; }

# Installs the Debian packages of whatever is missing, in one apt-get call.
install_missing() {
    local need=()
    command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    { command -v ffmpeg && command -v ffprobe; } >/dev/null 2>&1 || need+=(ffmpeg)
    if has_tool rclone && ! command -v rclone >/dev/null 2>&1; then need+=(rclone); fi
    if has_tool s3fs && ! command -v s3fs >/dev/null 2>&1; then need+=(s3fs); fi
    if [ ${#need[@]} -gt 0 ]; then
        say "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}
install_missing

# ------------------------------------------------------------------ work dir, cleanup

if [ -z "$WORK" ]; then
    WORK=$(mktemp -d /var/tmp/s3cachefs-bench.XXXXXX)
else
    mkdir -p "$WORK"
    [ -z "$(ls -A "$WORK")" ] || die "--work-dir $WORK is not empty"
fi
RAW=$WORK/raw.tsv                # every sample: tool <TAB> metric <TAB> run <TAB> value
SERVER_ROOT=$WORK/root           # the server's buckets: one directory each
DATA=$SERVER_ROOT/$BUCKET        # ... so the local-disk limits read these very files
LOGS=$WORK/logs
mkdir -p "$DATA/small" "$LOGS" "$WORK/mnt" "$WORK/cache" "$WORK/pids" "$WORK/bin"
: >"$RAW"
SERVER_PID=

# Unmounts every mount of ours, stops what we started, removes the data. Runs on any exit.
cleanup() {
    local rc=$? m still=
    set +eu
    trap - EXIT INT TERM
    for t in "${ALL_TOOLS[@]}"; do
        unmount_tool "$t" 2>/dev/null
    done
    # The full-disk measurement's tmpfs.
    if mountpoint -q "$WORK/cache/s3cachefs" 2>/dev/null; then umount -l "$WORK/cache/s3cachefs"; fi
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    for m in "$WORK"/mnt/*; do
        if mountpoint -q "$m" 2>/dev/null; then still+=" $m"; fi
    done
    if [ -n "$still" ]; then
        # Never rm -rf through a live mount.
        say "still mounted:$still; left $WORK in place"
    elif [ "$KEEP" = 1 ]; then
        say "kept $WORK"
    elif [ "$rc" != 0 ]; then
        # Keep the logs of a failed run (they say why), not the gigabytes of data.
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

avail_mib=$(df -Pm "$WORK" | awk 'NR == 2 { print $4 }')
need_mib=$((BIG_MIB * 4 + 500))
[ "$avail_mib" -ge "$need_mib" ] || die "$WORK: $avail_mib MiB free, the benchmark needs about $need_mib MiB"

# ------------------------------------------------------------------ build

if [ "$BUILD" = 1 ]; then
    say "building (release)"
    cargo build --release --locked --bin s3cachefs --example s3server
fi
# Copies, so a rebuild in the same tree during the run cannot swap binaries under us.
cp target/release/s3cachefs target/release/examples/s3server "$WORK/bin/" ||
    die "no release binaries in target/release (run without --no-build)"
BIN=$WORK/bin/s3cachefs
SERVER=$WORK/bin/s3server

# ------------------------------------------------------------------ helpers

# --foreground: timeout otherwise puts the helper in a process group of its own, where
# Ctrl-C never reaches it, and bash, seeing its child survive, would carry on.
py() { timeout --foreground -k 10 "$STEP_TIMEOUT" python3 "$BENCH_PY" "$@"; }

# record TOOL METRIC RUN VALUE: one sample (or a note, when VALUE is not a number).
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RAW"; }

# fail TOOL WHY: records why TOOL's run stops, and stops it (the subshell of `guarded`, or
# for the limits the whole benchmark).
fail() {
    echo "bench.sh: $1: $2" >&2
    record "$1" error - "$2"
    exit 1
}

# step TOOL CMD...: runs CMD; when it fails, fails TOOL with CMD's last line of stderr.
step() {
    local tool=$1 rc=0
    shift
    "$@" 2>"$WORK/step.err" || rc=$?
    cat "$WORK/step.err" >&2
    [ "$rc" = 0 ] || fail "$tool" "$*: exit status $rc: $(tail -n 1 "$WORK/step.err")"
}

# measure TOOL METRIC RUN CMD...: one sample, the number CMD prints.
measure() {
    local tool=$1 metric=$2 run=$3 v
    shift 3
    v=$(step "$tool" "$@") || exit 1   # step has said why
    record "$tool" "$metric" "$run" "$v"
}

# measure_seq TOOL RUN FILE TTFB_METRIC MBS_METRICS: one sequential read of FILE (open,
# read 4 KiB, read to the end); a metric of "-" is left out, and MBS_METRICS may name
# several, comma-separated.
measure_seq() {
    local tool=$1 run=$2 out ttfb mbs m
    out=$(step "$tool" py seq "$3") || exit 1
    read -r ttfb mbs <<<"$out"
    [ "$4" = - ] || record "$tool" "$4" "$run" "$ttfb"
    for m in ${5//,/ }; do
        [ "$m" = - ] || record "$tool" "$m" "$run" "$mbs"
    done
}

# Writes dirty pages back first, so a previous step's writeback does not land in the next
# measurement, then empties the page cache (and dentries/inodes).
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# The credentials the server accepts; no AWS settings of the user's may leak in (a CA
# bundle, a profile, an endpoint, config files), and no proxy may sit in front of 127.0.0.1.
export AWS_ACCESS_KEY_ID=test-access-key AWS_SECRET_ACCESS_KEY=test-secret-key
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=$WORK/aws-config AWS_SHARED_CREDENTIALS_FILE=$WORK/aws-credentials
unset AWS_PROFILE AWS_CA_BUNDLE AWS_ENDPOINT_URL AWS_SESSION_TOKEN
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
: >"$AWS_CONFIG_FILE"
: >"$AWS_SHARED_CREDENTIALS_FILE"

# ------------------------------------------------------------------ data and server

make_data() {
    say "test data: ${BIG_MIB} MiB object, $SMALL_COUNT x $((SMALL_SIZE / 1024)) KiB objects, ${MP4_SECONDS} s MP4"
    # Small objects are written straight into the bucket directory: the server hashes a
    # 64 KiB file for its ETag in well under a millisecond.
    py mkfiles "$DATA/small" "$SMALL_COUNT" "$SMALL_SIZE"
    head -c "$BIG_BYTES" /dev/urandom >"$WORK/big.src"
    head -c "$MIB_BYTES" /dev/urandom >"$WORK/mib.src"
    # A real MP4 as ffmpeg writes it by default: the moov atom (the index ffprobe needs)
    # at the END, so a reader that fetches whole objects before answering pays for it.
    ffmpeg -nostdin -loglevel error -f lavfi -i "testsrc2=duration=$MP4_SECONDS:size=1280x720:rate=30" \
        -f lavfi -i "sine=frequency=440:duration=$MP4_SECONDS" \
        -c:v mpeg4 -q:v 2 -c:a aac -shortest "$WORK/video.src.mp4"
}

start_server() {
    "$SERVER" --root "$SERVER_ROOT" --port 0 --latency "$LATENCY" >"$LOGS/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 200); do
        grep -q 'http://127.0.0.1:' "$LOGS/server.log" && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "the S3 server exited: $(cat "$LOGS/server.log")"
        sleep 0.05
    done
    ENDPOINT=$(grep -o 'http://127.0.0.1:[0-9]*' "$LOGS/server.log" | head -1)
    [ -n "$ENDPOINT" ] || die "the S3 server did not say where it listens: $(cat "$LOGS/server.log")"
    say "S3 server at $ENDPOINT (latency $LATENCY ms)"
}

# curl against the local server, never through a proxy.
http() { curl -sS -f --noproxy '*' "$@"; }

# The big object and the MP4 go in with a PUT, so the server stores their MD5 ETag once;
# written straight into the directory, every HEAD and GET would hash the whole file.
# The server lets unsigned requests through (SimpleAuth plus an allow-all policy).
upload() {
    http -T "$WORK/big.src" "$ENDPOINT/$BUCKET/big.bin" -o /dev/null
    http -T "$WORK/mib.src" "$ENDPOINT/$BUCKET/mib.bin" -o /dev/null
    http -T "$WORK/video.src.mp4" "$ENDPOINT/$BUCKET/video.mp4" -o /dev/null
    rm -f "$WORK/big.src" "$WORK/mib.src" "$WORK/video.src.mp4"
    [ "$(stat -c %s "$DATA/big.bin")" = "$BIG_BYTES" ] || die "PUT of big.bin did not store $BIG_BYTES bytes"
    # An anonymous GET works too (the limits below rely on it).
    http "$ENDPOINT/$BUCKET/small/f0000.bin" -o "$WORK/probe.bin"
    cmp -s "$WORK/probe.bin" "$DATA/small/f0000.bin" || die "anonymous GET returned other bytes"
    rm -f "$WORK/probe.bin"
    MP4_LABEL="$(($(stat -c %s "$DATA/video.mp4") / 1000000)) MB, ${MP4_SECONDS} s, moov at the end"
}

# ------------------------------------------------------------------ mounting

mnt_of() { echo "$WORK/mnt/$1"; }
cache_of() { echo "$WORK/cache/$1"; }

# The pid of TOOL's process serving its mountpoint: the one with that path as an argument.
# (The process name is the tool's name, mount-s3 included.)
find_pid() {
    local mnt p
    mnt=$(mnt_of "$1")
    for p in $(pgrep -x "$1"); do
        if tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | grep -qxF "$mnt"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# Alive and not a zombie (a daemonised mount process may wait long to be reaped).
alive() {
    local state
    state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

write_peer_configs() {
    cat >"$WORK/rclone.conf" <<EOF
[local]
type = s3
provider = Other
access_key_id = $AWS_ACCESS_KEY_ID
secret_access_key = $AWS_SECRET_ACCESS_KEY
endpoint = $ENDPOINT
region = us-east-1
force_path_style = true
EOF
    (umask 077 && echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" >"$WORK/s3fs-passwd")
}

# mount_tool TOOL SESSION [extra s3cachefs flags]: a fresh mount on an empty cache dir,
# with the page cache dropped, so what follows is cold. Logs go to logs/TOOL-SESSION.log.
mount_tool() {
    local tool=$1 log=$LOGS/$1-$2.log mnt cache
    shift 2
    mnt=$(mnt_of "$tool")
    cache=$(cache_of "$tool")
    unmount_tool "$tool"
    # The full-disk measurement mounts a tmpfs on the cache dir: empty it, keep it.
    if mountpoint -q "$cache"; then find "$cache" -mindepth 1 -delete; else rm -rf "$cache"; fi
    mkdir -p "$mnt" "$cache"
    drop_caches
    local rc=0
    case "$tool" in
        s3cachefs)
            "$BIN" mount "$mnt" --endpoint-url "$ENDPOINT" --force-path-style --bucket "$BUCKET" \
                --cache-dir "$cache" --cache-max-size-mb 4096 --cache-max-entries 5000 \
                --log-file "$log" "$@" >/dev/null || rc=$? ;;
        rclone)
            rclone mount "local:$BUCKET" "$mnt" --config "$WORK/rclone.conf" --read-only \
                --vfs-cache-mode full --cache-dir "$cache" --daemon --log-file "$log" || rc=$? ;;
        s3fs)
            # s3fs signs with SigV4 by default; endpoint= is the region it signs for.
            # retries=1: s3fs looks a directory up with a HEAD of "small" and "small/". Real S3
            # answers 404; this server (s3s-fs: a key is a file path) answers 500 for a
            # directory, and s3fs backs off on a 500 for seconds per retry, 3 minutes with
            # its default 5 retries. See prepare_small_dir for the remaining few seconds.
            s3fs "$BUCKET" "$mnt" -o ro -o url="$ENDPOINT" -o use_path_request_style \
                -o endpoint=us-east-1 -o passwd_file="$WORK/s3fs-passwd" -o use_cache="$cache" \
                -o retries=1 -o logfile="$log" || rc=$? ;;
        mount-s3)
            mount-s3 "$BUCKET" "$mnt" --read-only --endpoint-url "$ENDPOINT" --force-path-style \
                --region us-east-1 --cache "$cache" --log-directory "$LOGS/mount-s3-$2" || rc=$? ;;
    esac
    [ "$rc" = 0 ] || fail "$tool" "mount failed (exit status $rc); see $log"
    for _ in $(seq 1 300); do
        mountpoint -q "$mnt" && break
        sleep 0.1
    done
    mountpoint -q "$mnt" || fail "$tool" "not mounted 30 s after starting; see $log"
    find_pid "$tool" >"$WORK/pids/$tool" || fail "$tool" "no $tool process serves $mnt"
}

# Unmounts TOOL (if mounted) and waits for its process to end, so the next mount starts clean.
unmount_tool() {
    local tool=$1 mnt pid=
    mnt=$(mnt_of "$tool")
    if [ -s "$WORK/pids/$tool" ]; then pid=$(cat "$WORK/pids/$tool"); fi
    if mountpoint -q "$mnt" 2>/dev/null; then
        if [ "$tool" = s3cachefs ]; then
            "$BIN" unmount "$mnt" >/dev/null || umount -l "$mnt"
        else
            umount "$mnt" || umount -l "$mnt"
        fi
    fi
    if [ -n "$pid" ]; then
        for _ in $(seq 1 100); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            echo "bench.sh: $tool (pid $pid) still running 10 s after unmount: killing it" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$WORK/pids/$tool"
}

# Peak RSS (VmHWM: the high-water mark since the process started) of TOOL's mount process.
record_rss() {
    local tool=$1 metric=$2 run=$3 pid kb
    pid=$(cat "$WORK/pids/$tool")
    kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status") || fail "$tool" "process $pid is gone"
    record "$tool" "$metric" "$run" "$(awk -v kb="$kb" 'BEGIN { printf "%.1f", kb / 1024 }')"
}

# Notes ERROR and WARN lines of an s3cachefs log and non-zero error counters in its
# .cache-stats, so a wrong behaviour shows up next to the numbers it may have changed.
check_s3cachefs() {
    local run=$1 session=$2 log=$LOGS/s3cachefs-$2.log n stats
    n=$(grep -cE ' (ERROR|WARN) ' "$log" || true)
    if [ "$n" != 0 ]; then
        record s3cachefs note "$run" "$session: $n ERROR/WARN lines in $log, e.g. $(grep -m1 -E ' (ERROR|WARN) ' "$log" | cut -c1-200)"
    fi
    stats=$(step s3cachefs py stats "$(mnt_of s3cachefs)/.cache-stats") || exit 1
    case "$stats" in
        "errors=0 corruptions=0"*) ;;
        *) record s3cachefs note "$run" "$session: .cache-stats $stats" ;;
    esac
}

# ------------------------------------------------------------------ measurements

# ms from curl's seconds, MB/s from bytes and seconds.
ms() { awk -v s="$1" 'BEGIN { printf "%.3f", s * 1e3 }'; }
mbs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.3f", b / s / 1e6 }'; }

measure_limits() {
    local r=$1 out size secs ttfb off t
    say "run $r/$RUNS: limits (local disk, plain HTTP)"
    # Local disk: the server's own files, read the same way as through the mounts.
    for _ in $(seq 1 "$DROPPED_READS"); do
        drop_caches
        measure_seq limit "$r" "$DATA/big.bin" - disk_seq_dropped_mbs
    done
    for _ in $(seq 1 "$KEPT_READS"); do measure_seq limit "$r" "$DATA/big.bin" - disk_seq_kept_mbs; done
    measure limit disk_rand_iops "$r" py rand "$DATA/big.bin" "$RAND_READS" "$r"
    drop_caches
    measure limit disk_small_dropped_fps "$r" py small "$DATA/small" "$DATA/small"
    measure limit disk_small_kept_fps "$r" py small "$DATA/small" "$DATA/small"
    drop_caches
    measure limit disk_ls_dropped_ms "$r" py time ls -l "$DATA/small"
    drop_caches
    measure limit ffprobe_disk_dropped_ms "$r" py time ffprobe -v error -show_format -show_streams "$DATA/video.mp4"

    # Plain HTTP against the same server, page cache dropped first like the cold mounts.
    drop_caches
    local get_big=(http -o /dev/null -w '%{size_download} %{time_total} %{time_starttransfer}' "$ENDPOINT/$BUCKET/big.bin")
    # Once (on a busy machine) the server closed this 1 GiB response early; one failure
    # of the reference GET is noted and measured again rather than ending the benchmark.
    out=$("${get_big[@]}" 2>"$WORK/step.err") || {
        record limit note "$r" "plain GET of the big object failed ($(tail -n 1 "$WORK/step.err")); measured again"
        drop_caches
        out=$(step limit "${get_big[@]}") || exit 1
    }
    read -r size secs ttfb <<<"$out"
    [ "$size" = "$BIG_BYTES" ] || fail limit "plain GET returned $size bytes, wanted $BIG_BYTES"
    record limit get_big_mbs "$r" "$(mbs "$size" "$secs")"
    record limit get_big_ttfb_ms "$r" "$(ms "$ttfb")"
    for _ in $(seq 1 "$RANGED_GETS"); do
        off=$(( (RANDOM * 32768 + RANDOM) % (BIG_BYTES / 4096) * 4096 ))
        t=$(step limit http -o /dev/null -r "$off-$((off + 4095))" -w '%{time_total}' \
            "$ENDPOINT/$BUCKET/big.bin") || exit 1
        record limit get_4k_ms "$r" "$(ms "$t")"
    done
    for _ in $(seq 1 "$LISTS"); do
        t=$(step limit http -o "$WORK/list.xml" -w '%{time_total}' \
            "$ENDPOINT/$BUCKET?list-type=2&prefix=small/") || exit 1
        record limit list_ms "$r" "$(ms "$t")"
    done
    [ "$(grep -o '<Key>' "$WORK/list.xml" | wc -l)" = "$SMALL_COUNT" ] || fail limit "LIST did not return $SMALL_COUNT keys"
    # All small objects with one curl: it keeps one connection open, as a client would.
    : >"$WORK/small-urls.cfg"
    for f in "$DATA"/small/*; do
        printf 'url = "%s/%s/small/%s"\noutput = "/dev/null"\n' "$ENDPOINT" "$BUCKET" "${f##*/}" >>"$WORK/small-urls.cfg"
    done
    t=$(step limit py time curl -sS -f --noproxy '*' -K "$WORK/small-urls.cfg") || exit 1
    record limit get_small_fps "$r" "$(awk -v n="$SMALL_COUNT" -v ms="$t" 'BEGIN { printf "%.3f", n / ms * 1e3 }')"
    measure limit ffprobe_http_ms "$r" py time ffprobe -v error -show_format -show_streams "$ENDPOINT/$BUCKET/video.mp4"
}

# Looks up the directory of small files itself (not its contents) before a timed step.
# On this server a HEAD of a directory's name answers 500 where S3 answers 404, and s3fs
# sleeps a few seconds on each 500 (even with retries=1); that is the server's quirk, not
# s3fs's speed. So every tool gets the one lookup of "small" untimed, and the timed steps
# measure the 1,000 files: listing them, or looking each up, opening and reading it.
prepare_small_dir() {
    step "$1" timeout --foreground 300 stat "$(mnt_of "$1")/small" >/dev/null
}

# One run of every measurement for TOOL, each cold one on a fresh mount and empty cache.
measure_tool() {
    local tool=$1 r=$2 mnt
    mnt=$(mnt_of "$tool")

    say "run $r/$RUNS: $tool: big object (cold, warm, random)"
    mount_tool "$tool" "r$r-big"
    # The first read through the mount gives both the first byte and the cold MB/s.
    measure_seq "$tool" "$r" "$mnt/big.bin" ttfb_cold_ms seq_cold_mbs
    local i
    for i in $(seq 1 "$DROPPED_READS"); do
        drop_caches
        measure_seq "$tool" "$r" "$mnt/big.bin" - \
            "seq_warm_dropped_mbs$([ "$i" = 1 ] && echo ,seq_warm_first_mbs)"
    done
    for _ in $(seq 1 "$KEPT_READS"); do measure_seq "$tool" "$r" "$mnt/big.bin" - seq_warm_kept_mbs; done
    measure "$tool" rand_iops_warm "$r" py rand "$mnt/big.bin" "$RAND_READS" "$r"
    finish_session "$tool" "$r" big

    # The same first byte of a 1 MiB object, also the first read of a fresh mount: with a
    # streaming fill it should not depend on the object's size.
    say "run $r/$RUNS: $tool: first byte of a 1 MiB object (cold)"
    mount_tool "$tool" "r$r-mib"
    measure_seq "$tool" "$r" "$mnt/mib.bin" ttfb_mib_cold_ms -
    finish_session "$tool" "$r" mib

    say "run $r/$RUNS: $tool: small files (cold, warm)"
    mount_tool "$tool" "r$r-small"
    prepare_small_dir "$tool"
    measure "$tool" small_cold_fps "$r" py small "$mnt/small" "$DATA/small"
    measure "$tool" small_warm_fps "$r" py small "$mnt/small" "$DATA/small"
    finish_session "$tool" "$r" small

    say "run $r/$RUNS: $tool: ls -l, ffprobe (cold)"
    mount_tool "$tool" "r$r-ls"
    prepare_small_dir "$tool"
    measure "$tool" ls_cold_ms "$r" py time ls -l "$mnt/small"
    finish_session "$tool" "$r" ls
    mount_tool "$tool" "r$r-ffprobe"
    measure "$tool" ffprobe_cold_ms "$r" py time ffprobe -v error -show_format -show_streams "$mnt/video.mp4"
    finish_session "$tool" "$r" ffprobe
}

# End of a mount session: its peak RSS, s3cachefs's own error counters, unmount.
finish_session() {
    local tool=$1 r=$2 session=$3
    record_rss "$tool" peak_rss_mib "$r"
    if [ "$tool" = s3cachefs ]; then check_s3cachefs "$r" "r$r-$session"; fi
    unmount_tool "$tool"
    rm -rf "$(cache_of "$tool")"
}

# Once per tool: the bytes read through a fresh mount, cold then warm, match the server's
# files (which is what a GET returns: the server serves those very files).
verify_tool() {
    local tool=$1 mnt
    mnt=$(mnt_of "$tool")
    say "$tool: checking the bytes read through the mount (cold, then warm)"
    mount_tool "$tool" verify
    step "$tool" py verify "$DATA/big.bin" "$mnt/big.bin" >/dev/null
    step "$tool" py verify "$DATA/big.bin" "$mnt/big.bin" >/dev/null
    step "$tool" py verify "$DATA/mib.bin" "$mnt/mib.bin" >/dev/null
    prepare_small_dir "$tool"
    step "$tool" py verify "$DATA/small" "$mnt/small" >/dev/null
    step "$tool" py verify "$DATA/small" "$mnt/small" >/dev/null
    step "$tool" py verify "$DATA/video.mp4" "$mnt/video.mp4" >/dev/null
    if [ "$tool" = s3cachefs ]; then check_s3cachefs 0 verify; fi
    unmount_tool "$tool"
    rm -rf "$(cache_of "$tool")"
    record "$tool" verified - "big object cold+warm, 1 MiB object, $SMALL_COUNT small files cold+warm, MP4: identical to the source"
}

# s3cachefs with --no-cache: throughput and peak RSS while NOCACHE_PASSES x the big object
# stream through it (memory must not grow with the bytes streamed), then the bytes checked.
measure_nocache() {
    local mnt
    mnt=$(mnt_of s3cachefs)
    say "s3cachefs --no-cache: streaming $NOCACHE_PASSES x $BIG_MIB MiB"
    mount_tool s3cachefs nocache --no-cache
    for _ in $(seq 1 "$NOCACHE_PASSES"); do
        measure_seq s3cachefs 1 "$mnt/big.bin" - nocache_mbs
    done
    record_rss s3cachefs nocache_peak_rss_mib 1
    step s3cachefs py verify "$DATA/big.bin" "$mnt/big.bin" >/dev/null
    check_s3cachefs 0 nocache
    unmount_tool s3cachefs
    record s3cachefs verified - "big object through --no-cache: identical to the source"
}

# s3cachefs with its cache on a disk too small for the big object (a 16 MiB tmpfs, the
# size limit far above it): the fill hits ENOSPC, gives the space back and the read goes
# on from S3 through the streaming reader. Sequential MB/s, compared with one plain GET;
# afterwards the tmpfs must be (nearly) empty again and the full disk counted.
FULLDISK_MIB=16
measure_fulldisk() {
    local mnt cache used stats
    mnt=$(mnt_of s3cachefs)
    cache=$(cache_of s3cachefs)
    say "s3cachefs on a full cache disk: $BIG_MIB MiB through a ${FULLDISK_MIB} MiB tmpfs"
    mkdir -p "$cache"
    mount -t tmpfs -o size=${FULLDISK_MIB}m,mode=0700 s3cachefs-bench-full "$cache"
    # mount_tool empties the cache dir, not the tmpfs mounted on it.
    mount_tool s3cachefs fulldisk
    measure_seq s3cachefs 1 "$mnt/big.bin" - fulldisk_mbs
    step s3cachefs py verify "$DATA/big.bin" "$mnt/big.bin" >/dev/null
    used=$(df -Pk "$cache" | awk 'NR == 2 { print $3 }')
    stats=$(cat "$mnt/.cache-stats")
    unmount_tool s3cachefs
    umount "$cache"
    case "$stats" in
        *'"disk_full_events":0'*) fail s3cachefs "full disk: disk_full_events stayed 0: $stats" ;;
    esac
    [ "$used" -lt 2048 ] || fail s3cachefs "full disk: ${used} KiB still used on the tmpfs after the read"
    record s3cachefs verified - "big object through a full cache disk: identical to the source; ${used} KiB left on the tmpfs"
}

# Runs "$@" in a subshell with errexit on, so a tool that fails is recorded, its mount torn
# down, and the benchmark goes on with the other tools.
FAILED=" "
guarded() {
    local tool=$1 rc=0
    shift
    set +e
    (
        set -eE
        # For failures no step caught (a step records its own and exits without this).
        trap 'trap - ERR; fail "$tool" "line $LINENO: $BASH_COMMAND"' ERR
        "$@"
    )
    rc=$?
    set -e
    if [ "$rc" != 0 ]; then
        FAILED+="$tool "
        unmount_tool "$tool" || true
        say "$tool failed: left out of the remaining runs"
    fi
}
failed() { [[ $FAILED == *" $1 "* ]]; }

# ------------------------------------------------------------------ main

START=$(date +%s)
make_data
start_server
upload
write_peer_configs

for r in $(seq 1 "$RUNS"); do
    # Anything else busy on the machine (a build, tests) shows up in every number: say so.
    # (From run 2 on, the load average includes this benchmark's own recent work.)
    load=$(cut -d' ' -f1 /proc/loadavg)
    record machine loadavg_1m "$r" "$load"
    if [ "$r" = 1 ] && awk -v l="$load" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
        say "the machine is busy (1-minute load average $load on $(nproc) CPUs): numbers will be noisy"
    fi
    measure_limits "$r"
    # Tools take turns within a run, so a drift in the machine spreads over all of them.
    for t in "${TOOLS[@]}"; do
        failed "$t" || guarded "$t" measure_tool "$t" "$r"
    done
done
if has_tool s3cachefs && ! failed s3cachefs; then guarded s3cachefs measure_nocache; fi
if has_tool s3cachefs && ! failed s3cachefs; then guarded s3cachefs measure_fulldisk; fi
for t in "${TOOLS[@]}"; do
    failed "$t" || guarded "$t" verify_tool "$t"
done

if [ -z "$JSON_OUT" ]; then
    mkdir -p target/bench
    JSON_OUT=$REPO/target/bench/bench-$(date +%Y%m%d-%H%M%S).json
fi
big_label="$BIG_MIB MiB"
if [ "$BIG_MIB" = 1024 ]; then big_label="1 GiB"; fi
# Run settings for the JSON (numbers as numbers) and the table's title.
meta=$(python3 -c '
import json, sys
kv = zip(sys.argv[1::2], sys.argv[2::2])
print(json.dumps({k: int(v) if v.isdigit() else v for k, v in kv}))' \
    runs "$RUNS" latency_ms "$LATENCY" big_label "$big_label" big_bytes "$BIG_BYTES" \
    mp4_label "$MP4_LABEL" small_count "$SMALL_COUNT" small_bytes "$SMALL_SIZE" \
    rand_reads "$RAND_READS" nocache_passes "$NOCACHE_PASSES" endpoint "$ENDPOINT" \
    commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    built "$(if [ "$BUILD" = 1 ]; then echo yes; else echo "no (--no-build)"; fi)" \
    tree_dirty "$(if [ -n "$(git status --porcelain 2>/dev/null)" ]; then echo yes; else echo no; fi)" \
    rclone "$(rclone version 2>/dev/null | head -1 || true)" \
    s3fs "$(s3fs --version 2>/dev/null | head -1 || true)" \
    mount_s3 "$(mount-s3 --version 2>/dev/null | head -1 || true)" \
    seconds "$(($(date +%s) - START))")
TOOLS_CSV=$(IFS=,; echo "${TOOLS[*]}")
python3 "$BENCH_PY" report "$RAW" --tools "$TOOLS_CSV" --json "$JSON_OUT" --meta "$meta"
echo "raw numbers: $JSON_OUT ($(($(date +%s) - START)) s)"
if [ "$FAILED" != " " ]; then
    # Exit non-zero (which keeps the logs) after the table, which still has the others.
    echo "failed:$FAILED(see the notes above; logs in $LOGS)"
    exit 1
fi
