#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs the whole suite.
# The integration tests mount real FUSE filesystems, so they need root and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# The metrics tests read /metrics with the Prometheus project's own Python parser; the
# test looks for it in the python3 on PATH, then in Debian's.
if ! { python3 -c 'import prometheus_client' || /usr/bin/python3 -c 'import prometheus_client'; } \
    >/dev/null 2>&1; then
    need+=(python3-prometheus-client)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "test.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
    echo "test.sh: /dev/fuse is missing: the mount tests need FUSE" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "test.sh: run as root (the tests mount FUSE filesystems)" >&2
    exit 1
fi

cargo test --locked "$@"
# Tests that drop the kernel's caches machine-wide run alone, after the others (only in
# a full run: with arguments, just what they select runs).
if [ $# -eq 0 ]; then
    cargo test --locked --test it -- --ignored --exact mount::inodes_are_dropped_when_the_kernel_forgets_them
fi
