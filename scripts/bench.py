#!/usr/bin/env python3
"""Measurement and report helper for scripts/bench.sh (plain Python 3, stdlib only).

Each measuring subcommand does one thing and prints one line (a number or a small JSON
object) for bench.sh to record; `report` turns the recorded samples into the table and
the JSON file. Timings use time.perf_counter() inside this process, so Python's start-up
is never part of a number.

    bench.py mkfiles DIR COUNT SIZE        write COUNT random files f0000.bin... of SIZE bytes
    bench.py seq FILE                      "TTFB_MS MB/S": open, read 4 KiB (first byte), read to EOF
    bench.py rand FILE COUNT SEED          IOPS of COUNT 4 KiB preads at aligned random offsets
    bench.py small DIR NAMES_DIR           files/s reading DIR/<name> for every name in NAMES_DIR
    bench.py time CMD...                   milliseconds CMD took (fails if CMD fails)
    bench.py verify SRC DST                compare a file, or every file of a directory, byte for byte
    bench.py stats FILE                    the error counters of a .cache-stats file
    bench.py report RAW --json OUT ...     print the table, write the JSON
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

BUF = 1 << 20
PAGE = 4096


def die(msg):
    print(f"bench.py: {msg}", file=sys.stderr)
    sys.exit(1)


def cmd_mkfiles(a):
    os.makedirs(a.dir, exist_ok=True)
    for i in range(a.count):
        with open(os.path.join(a.dir, f"f{i:04d}.bin"), "wb") as f:
            f.write(os.urandom(a.size))


def read_to_eof(f, buf):
    """Reads an unbuffered file to its end; returns the bytes read."""
    total = 0
    while True:
        n = f.readinto(buf)
        if not n:
            return total
        total += n


def cmd_seq(a):
    buf = bytearray(BUF)
    t0 = time.perf_counter()
    # buffering=0: every readinto is one read(2), so the first one is exactly 4 KiB.
    with open(a.file, "rb", buffering=0) as f:
        first = f.readinto(memoryview(buf)[:PAGE])
        t1 = time.perf_counter()
        if first != PAGE:
            die(f"{a.file}: first read returned {first} bytes, wanted {PAGE}")
        total = first + read_to_eof(f, buf)
        t2 = time.perf_counter()
        size = os.fstat(f.fileno()).st_size
    if total != size:
        die(f"{a.file}: read {total} bytes, but the file has {size}")
    print((t1 - t0) * 1e3, total / (t2 - t0) / 1e6)


def cmd_rand(a):
    fd = os.open(a.file, os.O_RDONLY)
    try:
        pages = os.fstat(fd).st_size // PAGE
        rng = random.Random(a.seed)  # same offsets for every tool in a run
        offsets = [rng.randrange(pages) * PAGE for _ in range(a.count)]
        t0 = time.perf_counter()
        for off in offsets:
            if len(os.pread(fd, PAGE, off)) != PAGE:
                die(f"{a.file}: short read at {off}")
        t1 = time.perf_counter()
    finally:
        os.close(fd)
    print(a.count / (t1 - t0))


def cmd_small(a):
    # Names come from the server's own directory, so the mount is never listed here:
    # this measures lookup + open + read + close only.
    names = sorted(os.listdir(a.names_dir))
    want = sum(os.path.getsize(os.path.join(a.names_dir, n)) for n in names)
    buf = bytearray(BUF)
    total = 0
    t0 = time.perf_counter()
    for n in names:
        with open(os.path.join(a.dir, n), "rb", buffering=0) as f:
            total += read_to_eof(f, buf)
    t1 = time.perf_counter()
    if total != want:
        die(f"{a.dir}: read {total} bytes, wanted {want}")
    print(len(names) / (t1 - t0))


def cmd_time(a):
    t0 = time.perf_counter()
    p = subprocess.run(a.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t1 = time.perf_counter()
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode(errors="replace")[-2000:])
        die(f"{' '.join(a.cmd)}: exit status {p.returncode}")
    print((t1 - t0) * 1e3)


def same_file(src, dst):
    with open(src, "rb") as s, open(dst, "rb") as d:
        off = 0
        while True:
            x, y = s.read(BUF), d.read(BUF)
            if x != y:
                # Find the first differing byte for the message.
                i = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), min(len(x), len(y)))
                return f"{dst}: differs from {src} at byte {off + i}"
            if not x:
                return None
            off += len(x)


def cmd_verify(a):
    if os.path.isdir(a.src):
        pairs = [(os.path.join(a.src, n), os.path.join(a.dst, n)) for n in sorted(os.listdir(a.src))]
    else:
        pairs = [(a.src, a.dst)]
    for s, d in pairs:
        err = same_file(s, d)
        if err:
            die(err)
    print(f"ok {len(pairs)}")


def cmd_stats(a):
    with open(a.file) as f:
        s = json.load(f)
    print(" ".join(f"{k}={s.get(k)}" for k in ("errors", "corruptions", "stale_served", "hits", "misses")))


# ---------------------------------------------------------------- report

# key, label, unit, higher is better, limit key, limit label
ROWS = [
    ("ttfb_cold_ms", "first byte, cold big object", "ms", False, "get_4k_ms", "one 4 KiB ranged GET"),
    ("ttfb_mib_cold_ms", "first byte, cold 1 MiB object", "ms", False, "get_4k_ms", "one 4 KiB ranged GET"),
    ("seq_cold_mbs", "sequential read, cold", "MB/s", True, "get_big_mbs", "one plain GET of the big object"),
    ("seq_warm_first_mbs", "sequential, warm, first read after the fill", "MB/s", True,
     "disk_seq_dropped_mbs", "local disk, page cache dropped"),
    ("seq_warm_dropped_mbs", "sequential, warm, page cache dropped", "MB/s", True,
     "disk_seq_dropped_mbs", "local disk, page cache dropped"),
    ("seq_warm_kept_mbs", "sequential, warm, page cache kept", "MB/s", True,
     "disk_seq_kept_mbs", "local disk, page cache kept"),
    ("rand_iops_warm", "4 KiB random reads, warm, 1 thread", "IOPS", True,
     "disk_rand_iops", "local disk, page cache kept"),
    ("small_cold_fps", "1,000 x 64 KiB files, cold", "files/s", True,
     "get_small_fps", "1,000 plain GETs, one connection"),
    ("small_warm_fps", "1,000 x 64 KiB files, warm", "files/s", True,
     "disk_small_kept_fps", "local disk, page cache kept"),
    ("ls_cold_ms", "ls -l of the 1,000 files, cold", "ms", False, "list_ms", "one LIST of 1,000 keys"),
    ("ffprobe_cold_ms", "ffprobe of the MP4, cold", "ms", False, "ffprobe_http_ms", "ffprobe over plain HTTP"),
    ("peak_rss_mib", "peak RSS of the mount process", "MiB", False, None, None),
    ("nocache_mbs", "sequential, --no-cache", "MB/s", True, "get_big_mbs", "one plain GET of the big object"),
    ("nocache_peak_rss_mib", "peak RSS, 4x big object, --no-cache", "MiB", False, None, None),
    ("fulldisk_mbs", "sequential, cache disk full (16 MiB tmpfs)", "MB/s", True, "get_big_mbs",
     "one plain GET of the big object"),
]

# Per-run value of a metric with several samples in one run: the highest for peaks (a
# run's peak is its worst moment), the median otherwise (e.g. 20 ranged GETs).
def per_run(metric, samples):
    return max(samples) if "peak" in metric else statistics.median(samples)


def load_raw(path):
    """Raw lines: tool <TAB> metric <TAB> run <TAB> value."""
    samples, notes = {}, {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 3)
            if len(parts) != 4:
                continue
            tool, metric, run, value = parts
            try:
                v = float(value)
            except ValueError:
                notes.setdefault(tool, {}).setdefault(metric, []).append(value)
                continue
            samples.setdefault(tool, {}).setdefault(metric, {}).setdefault(run, []).append(v)
    return samples, notes


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(r):
    if r is None:
        return "-"
    return f"{r:,.0f}x" if r >= 100 else f"{r:.2f}x"


def cmd_report(a):
    samples, notes = load_raw(a.raw)
    tools = a.tools.split(",")
    peers = [t for t in tools if t != "s3cachefs"]
    medians = {
        tool: {m: statistics.median(per_run(m, v) for v in runs.values()) for m, runs in ms.items()}
        for tool, ms in samples.items()
    }
    meta = json.loads(a.meta)

    header = ["metric", "unit"] + tools + ["÷ best peer", "limit", "÷ limit", "limit is"]
    table, ratios = [], {}
    for key, label, unit, higher, lkey, llabel in ROWS:
        vals = {t: medians.get(t, {}).get(key) for t in tools}
        if all(v is None for v in vals.values()):
            continue
        ours = vals.get("s3cachefs")
        peer_vals = {t: vals[t] for t in peers if vals[t] is not None}
        best = None
        if peer_vals:
            best = (max if higher else min)(peer_vals, key=peer_vals.get)
        limit = medians.get("limit", {}).get(lkey) if lkey else None
        r_peer = ours / peer_vals[best] if ours is not None and best and peer_vals[best] else None
        r_limit = ours / limit if ours is not None and limit else None
        ratios[key] = {"unit": unit, "higher_is_better": higher, "best_peer": best,
                       "vs_best_peer": r_peer, "limit": llabel, "limit_value": limit,
                       "vs_limit": r_limit}
        table.append([label, unit] + [fmt(vals[t]) for t in tools] +
                     [fmt_ratio(r_peer) + (f" {best}" if best else ""), fmt(limit),
                      fmt_ratio(r_limit), llabel or ""])

    widths = [max(len(r[i]) for r in [header] + table) for i in range(len(header))]
    def line(cells):
        out = []
        for i, c in enumerate(cells):
            # Text columns (first two and the last) left-aligned, numbers right-aligned.
            out.append(c.ljust(widths[i]) if i < 2 or i == len(cells) - 1 else c.rjust(widths[i]))
        return "  ".join(out).rstrip()

    print()
    print(f"s3cachefs benchmark: big object {meta['big_label']}, 1 MiB object, 1,000 x 64 KiB files, "
          f"MP4 {meta['mp4_label']}; median of {meta['runs']} run(s); "
          f"server latency {meta['latency_ms']} ms")
    print(line(header))
    print(line(["-" * w for w in widths]))
    for r in table:
        print(line(r))
    print()
    print("Ratios are s3cachefs ÷ the other. For MB/s, IOPS and files/s higher is better (a ratio")
    print("above 1 favours s3cachefs); for ms and MiB lower is better (a ratio below 1 favours it).")
    print("MB/s = 10^6 bytes per second. 'cold' = fresh mount, empty cache dir, page cache dropped.")
    print("The directory of small files is looked up (untimed) before its rows: this server answers")
    print("500 to a HEAD of a directory's name, where S3 answers 404 (see prepare_small_dir).")
    load = samples.get("machine", {}).get("loadavg_1m")
    if load:
        print("1-minute load average at the start of each run (from run 2 on, this benchmark's own "
              "work included): " + ", ".join(f"{v[0]:.2f}" for _, v in sorted(load.items(), key=lambda kv: int(kv[0]))))
    for tool in tools + ["limit"]:
        for metric, values in sorted(notes.get(tool, {}).items()):
            for v in values:
                print(f"{tool}: {metric}: {v}")

    out = {"config": meta, "tools": tools, "medians": medians, "ratios": ratios,
           "samples": samples, "notes": notes}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
            f.write("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="sub", required=True)
    s = sub.add_parser("mkfiles"); s.add_argument("dir"); s.add_argument("count", type=int); s.add_argument("size", type=int)
    s = sub.add_parser("seq"); s.add_argument("file")
    s = sub.add_parser("rand"); s.add_argument("file"); s.add_argument("count", type=int); s.add_argument("seed", type=int)
    s = sub.add_parser("small"); s.add_argument("dir"); s.add_argument("names_dir")
    s = sub.add_parser("time"); s.add_argument("cmd", nargs=argparse.REMAINDER)
    s = sub.add_parser("verify"); s.add_argument("src"); s.add_argument("dst")
    s = sub.add_parser("stats"); s.add_argument("file")
    s = sub.add_parser("report"); s.add_argument("raw"); s.add_argument("--json"); s.add_argument("--tools", required=True)
    s.add_argument("--meta", default="{}")
    a = p.parse_args()
    try:
        globals()["cmd_" + a.sub](a)
    except OSError as e:
        # One line (bench.sh quotes the last line of a failed step), not a traceback.
        die(str(e))


if __name__ == "__main__":
    main()
