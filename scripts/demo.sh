#!/usr/bin/env bash
# One command on a fresh machine: installs what is missing (fuse3), builds, starts a
# local S3-protocol server with sample objects (a real MP4 when ffmpeg is present),
# mounts it, shows `ls`, reads, `.cache-stats`, and cleans everything up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if ! command -v fusermount3 >/dev/null 2>&1; then
    echo "==> installing fuse3"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null
fi

echo "==> building (release)"
cargo build --release --locked --bin s3cachefs --example s3server
BIN=$ROOT/target/release/s3cachefs
SERVER=$ROOT/target/release/examples/s3server

WORK=$(mktemp -d /tmp/s3cachefs-demo.XXXXXX)
SERVER_PID=
cleanup() {
    set +e
    if mountpoint -q "$WORK/mnt" 2>/dev/null; then "$BIN" unmount "$WORK/mnt"; fi
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "==> sample objects"
mkdir -p "$WORK/objects/demo/docs/2026" "$WORK/objects/demo/media" "$WORK/mnt"
echo "Hello from S3, served through s3cachefs." > "$WORK/objects/demo/hello.txt"
seq 1 20000 > "$WORK/objects/demo/docs/2026/numbers.txt"
head -c 8388608 /dev/urandom > "$WORK/objects/demo/media/random-8MiB.bin"
if command -v ffmpeg >/dev/null 2>&1; then
    ffmpeg -loglevel error -f lavfi -i testsrc=duration=5:size=640x360:rate=25 \
        -f lavfi -i sine=frequency=440:duration=5 -c:v mpeg4 -c:a aac -shortest \
        "$WORK/objects/demo/media/video.mp4"
else
    echo "    (ffmpeg not installed: no MP4 in the demo; apt-get install ffmpeg to add one)"
fi

echo "==> local S3 server on 127.0.0.1"
"$SERVER" --root "$WORK/objects" --port 0 > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q "serving" "$WORK/server.log" 2>/dev/null && break; sleep 0.05; done
ENDPOINT=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/server.log" | head -1)
echo "    $ENDPOINT"

export AWS_ACCESS_KEY_ID=test-access-key AWS_SECRET_ACCESS_KEY=test-secret-key
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_CA_BUNDLE AWS_ENDPOINT_URL

echo "==> s3cachefs mount $WORK/mnt"
"$BIN" mount "$WORK/mnt" --endpoint-url "$ENDPOINT" --force-path-style \
    --cache-dir "$WORK/cache"

show() { echo; echo "\$ $*"; "$@"; }
show ls -la "$WORK/mnt"
show ls -lR "$WORK/mnt/demo"
show cat "$WORK/mnt/demo/hello.txt"
show sh -c "tail -n 2 '$WORK/mnt/demo/docs/2026/numbers.txt'"
echo; echo "\$ time cat media/random-8MiB.bin (cold, then warm)"
for pass in cold warm; do
    s=$(date +%s.%N); cat "$WORK/mnt/demo/media/random-8MiB.bin" > /dev/null; e=$(date +%s.%N)
    echo "    $pass: $(echo "$e - $s" | bc 2>/dev/null || python3 -c "print(round($e-$s,4))") s"
done
if [ -f "$WORK/objects/demo/media/video.mp4" ] && command -v ffprobe >/dev/null 2>&1; then
    show ffprobe -hide_banner -loglevel error -show_entries format=duration,format_name \
        "$WORK/mnt/demo/media/video.mp4"
fi
show cmp "$WORK/objects/demo/media/random-8MiB.bin" "$WORK/mnt/demo/media/random-8MiB.bin"
echo "    (identical)"
show sh -c "echo x > '$WORK/mnt/demo/new.txt' || true"
show cat "$WORK/mnt/.cache-stats"
echo
echo "==> unmounting and cleaning up"
