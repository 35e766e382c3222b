#!/usr/bin/env python3
"""Helper of scripts/soak.sh (Python 3 standard library only).

  soak.py gen SRC_ROOT BUCKET COUNT MIN_BYTES MAX_BYTES SEED
      Writes COUNT objects of random bytes, sizes log-uniform in [MIN_BYTES, MAX_BYTES],
      as files under SRC_ROOT/BUCKET, plus the s3s-fs metadata file holding each one's MD5
      ETag (else the server hashes the whole file on every HEAD and GET).

  soak.py run --mnt DIR --src DIR ...   (see --help)
      Many threads doing random ranged reads (os.pread) of random objects through the
      mount for a set time, each read checked against the source file's bytes; meanwhile
      samples the mount's RSS and the cache directory. Afterwards waits for downloads to
      settle and checks the cache against its limits. Prints the figures; exit status 1 on
      any wrong byte, a hung read, or a cache over its limits or out of step with its files.
"""

import argparse
import base64
import errno
import hashlib
import json
import math
import os
import random
import http.client
import re
import sys
import threading
import time

MIB = 1 << 20


def gen(root, bucket, count, min_bytes, max_bytes, seed):
    rng = random.Random(seed)
    data_dir = os.path.join(root, bucket)
    os.makedirs(data_dir, exist_ok=True)
    total = 0
    for i in range(count):
        size = int(math.exp(rng.uniform(math.log(min_bytes), math.log(max_bytes))))
        key = f"obj-{i:04d}.bin"
        md5 = hashlib.md5()
        with open(os.path.join(data_dir, key), "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 4 * MIB))
                md5.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        # s3s-fs keeps an object's ETag in <root>/.bucket-<b64>.object-<b64>.internal.json.
        enc = lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")
        meta = os.path.join(root, f".bucket-{enc(bucket)}.object-{enc(key)}.internal.json")
        with open(meta, "w") as f:
            json.dump({"e_tag": md5.hexdigest()}, f)
        total += size
    print(f"    {count} objects, {total / MIB:.1f} MiB in {data_dir}")


# ---------------------------------------------------------------- reading


class Histogram:
    """Read latencies in log2 buckets of microseconds (constant memory for long runs)."""

    def __init__(self):
        self.buckets = [0] * 40
        self.count = 0
        self.max = 0.0

    def add(self, seconds):
        us = max(1, int(seconds * 1e6))
        self.buckets[min(us.bit_length(), 39)] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def merge(self, other):
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n
        self.count += other.count
        self.max = max(self.max, other.max)

    def quantile(self, q):
        """Upper bound of the bucket holding quantile q, in seconds."""
        if not self.count:
            return 0.0
        want = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= want:
                return min((1 << i) / 1e6, self.max)
        return self.max


class Reader(threading.Thread):
    def __init__(self, n, args, objects, versions, deadline):
        super().__init__(name=f"reader-{n}", daemon=True)
        self.rng = random.Random(args.seed * 1000 + n)
        self.args = args
        self.objects = objects
        # name -> fds of every version the object has had, oldest first (see Writer).
        self.versions = versions
        self.deadline = deadline
        self.reads = 0
        self.opens = 0
        self.bytes = 0
        self.errors = {}  # "open ENOENT" / "read EIO" -> count
        self.wrong_reads = 0
        self.wrong_bytes = 0
        self.wrong_examples = []
        self.newer_opens = 0  # opens whose reads matched only versions after the first
        self.lat = Histogram()
        self.slow = 0  # reads longer than the mount's read timeout + 5 s
        self.busy_since = None  # start of the operation under way (hang detection)
        self.busy_what = ""

    def error(self, op, e):
        name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
        k = f"{op} {name}"
        self.errors[k] = self.errors.get(k, 0) + 1

    def check(self, name, off, ln, got, candidates):
        """`candidates`: the versions this open may still be reading. A read must match
        one of them; those it does not match are dropped, so one open never mixes two."""
        fds = self.versions[name]
        wants = {v: os.pread(fds[v], ln, off) for v in candidates}
        left = {v for v, want in wants.items() if got == want}
        if left:
            candidates &= left
            return
        want = wants[max(candidates)]
        n = min(len(got), len(want))
        diff = sum(1 for i in range(n) if got[i] != want[i])
        self.wrong_reads += 1
        self.wrong_bytes += diff + abs(len(got) - len(want))
        if len(self.wrong_examples) < 5:
            first = next((i for i in range(n) if got[i] != want[i]), n)
            self.wrong_examples.append(
                f"{name} offset {off} length {ln}: got {len(got)} bytes, want {len(want)}, "
                f"first difference at +{first}"
            )

    def timed_pread(self, fd, ln, off, what):
        self.busy_what = what
        self.busy_since = time.monotonic()
        try:
            return os.pread(fd, ln, off)
        finally:
            dt = time.monotonic() - self.busy_since
            self.busy_since = None
            self.lat.add(dt)
            if dt > self.args.read_timeout + 5:
                self.slow += 1

    def run(self):
        rng, a = self.rng, self.args
        while time.monotonic() < self.deadline:
            name, size = rng.choice(self.objects)
            path = os.path.join(a.mnt, name)
            self.busy_what, self.busy_since = f"open {name}", time.monotonic()
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                self.busy_since = None
                self.error("open", e)
                continue
            self.busy_since = None
            self.opens += 1
            candidates = set(range(len(self.versions[name])))
            try:
                if rng.random() < a.whole_file_share:
                    # Now and then the whole object in order, as a copy would.
                    plan = [(off, MIB) for off in range(0, size + 1, MIB)]
                else:
                    plan = []
                    for _ in range(rng.randint(1, 8)):
                        off = rng.choice([0, rng.randrange(size), max(0, size - rng.randint(1, 65536))])
                        ln = rng.choice([1, 4096, 65536, 131072, MIB, rng.randint(1, 2 * MIB)])
                        plan.append((off, ln))
                for off, ln in plan:
                    if time.monotonic() >= self.deadline:
                        break
                    try:
                        got = self.timed_pread(fd, ln, off, f"pread {name} @{off}+{ln}")
                    except OSError as e:
                        self.error("read", e)
                        continue
                    self.reads += 1
                    self.bytes += len(got)
                    self.check(name, off, ln, got, candidates)
            finally:
                os.close(fd)
                if candidates and 0 not in candidates:
                    self.newer_opens += 1


class Writer(threading.Thread):
    """Replaces a random object with a new version every `every` seconds, through the
    server (a PUT), keeping each version's bytes so the readers can check theirs."""

    def __init__(self, args, objects, versions, deadline):
        super().__init__(name="writer", daemon=True)
        self.rng = random.Random(args.seed * 1000 + 999)
        self.args = args
        self.objects = objects
        self.versions = versions
        self.deadline = deadline
        self.done = 0
        self.failed = 0
        os.makedirs(args.versions_dir, exist_ok=True)

    def run(self):
        a = self.args
        host, port = a.endpoint.split("//", 1)[1].split(":")
        while time.monotonic() + a.overwrite_every < self.deadline:
            time.sleep(a.overwrite_every)
            name, size = self.rng.choice(self.objects)
            k = len(self.versions[name])
            path = os.path.join(a.versions_dir, f"{name}.v{k}")
            data = os.urandom(max(1, int(size * self.rng.uniform(0.5, 1.5))))
            with open(path, "wb") as f:
                f.write(data)
            # Known before S3 has it: a reader may meet it as soon as the PUT lands.
            self.versions[name].append(os.open(path, os.O_RDONLY))
            for _ in range(10):  # the server injects faults into PUTs too
                try:
                    c = http.client.HTTPConnection(host, int(port), timeout=30)
                    c.request("PUT", f"/{a.bucket}/{name}", body=data)
                    ok = c.getresponse().status == 200
                    c.close()
                except OSError:
                    ok = False
                if ok:
                    self.done += 1
                    break
                time.sleep(0.2)
            else:
                self.failed += 1


def vm_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cache_files(cache_dir):
    """(files, bytes) of complete entries in the shards, and (files, bytes) in tmp/.

    Not one atomic look: tmp/ is listed first and files are counted once by inode, so a
    download renamed into its shard during the scan is not counted twice (the cache
    deletes victims before it creates the file they made room for)."""
    shard_re = re.compile(r"^[0-9a-f]{2}$")
    done = [0, 0]
    tmp = [0, 0]
    seen = set()
    try:
        names = sorted(os.listdir(cache_dir), key=lambda d: d != "tmp")
    except OSError:
        return done, tmp
    for d in names:
        into = tmp if d == "tmp" else done if shard_re.match(d) else None
        if into is None:
            continue
        try:
            with os.scandir(os.path.join(cache_dir, d)) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                    into[0] += 1
                    into[1] += st.st_size
        except OSError:
            pass
    return done, tmp


def read_stats(stats_path):
    try:
        with open(stats_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Monitor(threading.Thread):
    """Samples the cache directory (4/s), the mount's RSS and .cache-stats (1/s)."""

    def __init__(self, args, readers):
        super().__init__(name="monitor", daemon=True)
        self.args = args
        self.readers = readers
        self.stop = threading.Event()
        self.peak_rss_kib = 0
        self.peak_disk = 0  # bytes of complete entries + downloads under way
        self.peak_files = 0
        self.peak_total_size = 0
        self.peak_entries = 0
        self.peak_in_flight = 0
        self.samples = 0

    def run(self):
        a = self.args
        started = time.monotonic()
        last_print = started
        st = rss = None
        while not self.stop.wait(0.25):
            # The directory four times a second, the process and .cache-stats once.
            self.samples += 1
            done, tmp = cache_files(a.cache_dir)
            self.peak_disk = max(self.peak_disk, done[1] + tmp[1])
            self.peak_files = max(self.peak_files, done[0] + tmp[0])
            if self.samples % 4:
                continue
            rss = vm_kib(a.pid, "VmRSS")
            if rss:
                self.peak_rss_kib = max(self.peak_rss_kib, rss)
            st = read_stats(a.stats)
            if st:
                self.peak_total_size = max(self.peak_total_size, st.get("total_size", 0))
                self.peak_entries = max(self.peak_entries, st.get("entry_count", 0))
                self.peak_in_flight = max(self.peak_in_flight, st.get("downloads_in_flight", 0))
            now = time.monotonic()
            if now - last_print >= a.progress_every:
                last_print = now
                reads = sum(r.reads for r in self.readers)
                errs = sum(sum(r.errors.values()) for r in self.readers)
                wrong = sum(r.wrong_bytes for r in self.readers)
                hit = f"{st.get('hit_rate', 0):.2f}" if st else "?"
                print(
                    f"    {now - started:5.0f} s: {reads} reads, {errs} errors, {wrong} wrong bytes, "
                    f"RSS {(rss or 0) / 1024:.0f} MiB, cache {(done[1] + tmp[1]) / MIB:.0f} MiB "
                    f"in {done[0]}+{tmp[0]} files, hit rate {hit}",
                    flush=True,
                )


def fault_summary(server_log):
    kinds = {}
    try:
        with open(server_log) as f:
            for line in f:
                m = re.match(r"fault: tick \d+: (.*)", line)
                if not m:
                    continue
                what = m.group(1)
                k = ("503" if "503" in what else "500 (GET)" if "GETs answer 500" in what
                     else "500 (any)" if "any kind" in what else "cut" if "cut" in what
                     else "stall" if "stalls" in what else "latency" if "latency" in what
                     else "none")
                kinds[k] = kinds.get(k, 0) + 1
    except OSError:
        pass
    return kinds


def log_summary(log_file):
    counts = {"WARN": 0, "ERROR": 0, "panic": 0}
    try:
        with open(log_file, errors="replace") as f:
            for line in f:
                if " WARN " in line:
                    counts["WARN"] += 1
                elif " ERROR " in line:
                    counts["ERROR"] += 1
                if "panicked" in line:
                    counts["panic"] += 1
    except OSError:
        pass
    return counts


def run(a):
    a.stats = os.path.join(a.mnt_root, ".cache-stats")
    objects = sorted(
        (n, os.path.getsize(os.path.join(a.src, n))) for n in os.listdir(a.src)
    )
    if not objects:
        sys.exit(f"soak.py: no objects in {a.src}")
    # The server replaces a file by renaming a new one over it: these stay the first versions.
    versions = {n: [os.open(os.path.join(a.src, n), os.O_RDONLY)] for n, _ in objects}
    deadline = time.monotonic() + a.duration
    readers = [Reader(i, a, objects, versions, deadline) for i in range(a.threads)]
    writer = Writer(a, objects, versions, deadline) if a.overwrite_every > 0 else None
    if writer:
        writer.start()
    mon = Monitor(a, readers)
    t0 = time.monotonic()
    for r in readers:
        r.start()
    mon.start()

    # Every reader stops at the deadline; one still busy long after it is hung.
    grace = a.read_timeout * 3 + 30
    for r in readers:
        r.join(max(0.0, deadline + grace - time.monotonic()))
    elapsed = time.monotonic() - t0
    hung = [r for r in readers if r.is_alive()]
    mon.stop.set()
    mon.join(5)

    # Let downloads under way finish, so the files on disk can be matched to the index.
    settle_until = time.monotonic() + 120
    st = read_stats(a.stats)
    while st is not None and st.get("downloads_in_flight", 0) > 0 and time.monotonic() < settle_until:
        time.sleep(0.5)
        st = read_stats(a.stats)
    hwm = vm_kib(a.pid, "VmHWM")
    done, tmp = cache_files(a.cache_dir)
    faults = fault_summary(a.server_log)
    logs = log_summary(a.mount_log)

    lat = Histogram()
    errors = {}
    for r in readers:
        lat.merge(r.lat)
        for k, n in r.errors.items():
            errors[k] = errors.get(k, 0) + n
    reads = sum(r.reads for r in readers)
    opens = sum(r.opens for r in readers)
    nbytes = sum(r.bytes for r in readers)
    n_errors = sum(errors.values())
    wrong_reads = sum(r.wrong_reads for r in readers)
    wrong_bytes = sum(r.wrong_bytes for r in readers)
    slow = sum(r.slow for r in readers)
    examples = [e for r in readers for e in r.wrong_examples][:10]
    max_size = a.max_size_mb * MIB

    failures = []
    if wrong_bytes or wrong_reads:
        failures.append(f"{wrong_reads} reads returned wrong bytes")
    if hung:
        failures.append(f"{len(hung)} readers hung (still in a call {grace:.0f} s after the end)")
    if st is None:
        failures.append(".cache-stats could not be read at the end")
    else:
        if st["total_size"] > max_size or st["entry_count"] > a.max_entries:
            failures.append("cache over its limits at the end")
        if st.get("downloads_in_flight", 0) == 0 and (done[0] != st["entry_count"] or done[1] != st["total_size"]):
            failures.append(
                f"cache files ({done[0]} files, {done[1]} bytes) differ from the index "
                f"({st['entry_count']} entries, {st['total_size']} bytes)"
            )
    if mon.peak_total_size > max_size or mon.peak_entries > a.max_entries:
        failures.append("cache over its limits during the run (.cache-stats)")
    warnings = []
    if mon.peak_disk > max_size:
        # Sampled by listing the directory, which is not atomic: a warning, not a failure.
        warnings.append(
            f"cache files on disk (entries + downloads) reached {mon.peak_disk / MIB:.1f} MiB, "
            f"over the {max_size / MIB:.0f} MiB limit, in at least one sample"
        )
    if logs["panic"]:
        failures.append("panics in the mount's log")

    p = lambda s: f"{s * 1000:.3f} ms"
    print()
    print("==> soak results")
    print(f"    duration              {elapsed:.0f} s, {a.threads} reader threads, {len(objects)} objects")
    print(f"    reads done            {reads} ({opens} opens, {nbytes / MIB:.0f} MiB, {reads / max(elapsed, 1):.0f} reads/s)")
    print(f"    read latency          p50 <= {p(lat.quantile(0.5))}, p99 <= {p(lat.quantile(0.99))}, "
          f"max {p(lat.max)}; {slow} over read-timeout + 5 s")
    print(f"    errors returned       {n_errors}" + (f"  {dict(sorted(errors.items()))}" if errors else ""))
    if writer:
        newer = sum(r.newer_opens for r in readers)
        print(f"    overwrites            {writer.done} new versions put ({writer.failed} PUTs given up), "
              f"{newer} opens read a later version; a read may fail on a version no longer "
              "anywhere (ESTALE/EIO), never return wrong bytes")
    print(f"    wrong bytes           {wrong_bytes} (in {wrong_reads} reads)")
    for e in examples:
        print(f"        {e}")
    if hung:
        now = time.monotonic()
        for r in hung:
            since = f"{now - r.busy_since:.0f} s" if r.busy_since else "?"
            print(f"    HUNG {r.name}: {r.busy_what} for {since}")
    print(f"    peak RSS (VmHWM)      {hwm / 1024:.1f} MiB" if hwm else "    peak RSS (VmHWM)      ? (process gone)")
    print(f"    faults injected       " + (", ".join(f"{k} {n}" for k, n in sorted(faults.items())) or "none"))
    if st:
        print(f"    cache at the end      .cache-stats total_size {st['total_size'] / MIB:.1f} MiB of "
              f"{max_size / MIB:.0f} MiB, {st['entry_count']} of {a.max_entries} entries, "
              f"{st.get('downloads_in_flight', 0)} downloads in flight")
    print(f"                          shard files {done[1] / MIB:.1f} MiB in {done[0]} files "
          f"(du {du_kib(a.cache_dir) / 1024:.1f} MiB allocated); tmp/ {tmp[0]} files, {tmp[1] / MIB:.1f} MiB")
    print(f"    cache peaks (sampled) on disk {mon.peak_disk / MIB:.1f} MiB (entries + downloads), "
          f"total_size {mon.peak_total_size / MIB:.1f} MiB, {mon.peak_entries} entries, "
          f"{mon.peak_in_flight} downloads in flight")
    if st:
        keys = ["hits", "misses", "hit_rate", "evictions", "etag_validations", "etag_mismatches",
                "stale_served", "corruptions", "errors", "passthrough_opens", "read_requests"]
        print("    stats                 " + ", ".join(f"{k} {st.get(k)}" for k in keys))
        print(f"                          bytes_from_s3 {st.get('bytes_from_s3', 0) / MIB:.0f} MiB, "
              f"bytes_from_cache {st.get('bytes_from_cache', 0) / MIB:.0f} MiB")
        if st.get("shared_state", "off") != "off":
            keys = ["shared_state", "shared_hits", "shared_misses", "shared_errors", "shared_corrupt",
                    "shared_uploads", "shared_uploads_dropped"]
            print("    shared tier           " + ", ".join(f"{k} {st.get(k)}" for k in keys)
                  + f", bytes_from_shared {st.get('bytes_from_shared', 0) / MIB:.0f} MiB")
    print(f"    mount log             {logs['WARN']} WARN, {logs['ERROR']} ERROR, {logs['panic']} panics")
    for w in warnings:
        print("    WARNING: " + w)
    if failures:
        print("    FAILED: " + "; ".join(failures))
        return 1
    print("    OK: no wrong bytes, no hung reads, limits held")
    return 0


def du_kib(path):
    """Allocated KiB of the shard files (what `du` would say for them)."""
    total = 0
    for d in os.listdir(path) if os.path.isdir(path) else []:
        if not re.match(r"^[0-9a-f]{2}$", d):
            continue
        with os.scandir(os.path.join(path, d)) as it:
            for e in it:
                try:
                    total += e.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    pass
    return total // 1024


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "gen":
        if len(sys.argv) != 8:
            sys.exit("usage: soak.py gen SRC_ROOT BUCKET COUNT MIN_BYTES MAX_BYTES SEED")
        root, bucket = sys.argv[2], sys.argv[3]
        count, lo, hi, seed = (int(x) for x in sys.argv[4:8])
        gen(root, bucket, count, lo, hi, seed)
        return 0
    ap = argparse.ArgumentParser(prog="soak.py run")
    ap.add_argument("cmd", choices=["run"])
    ap.add_argument("--mnt-root", required=True, help="the mountpoint (for .cache-stats)")
    ap.add_argument("--mnt", required=True, help="the bucket's directory in the mount")
    ap.add_argument("--src", required=True, help="the same objects as files, to compare with")
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--pid", type=int, required=True, help="the s3cachefs process")
    ap.add_argument("--server-log", default="")
    ap.add_argument("--mount-log", default="")
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--read-timeout", type=float, default=30)
    ap.add_argument("--max-size-mb", type=int, required=True)
    ap.add_argument("--max-entries", type=int, required=True)
    ap.add_argument("--whole-file-share", type=float, default=0.05,
                    help="share of opens that read the whole object in order")
    ap.add_argument("--progress-every", type=float, default=10)
    ap.add_argument("--overwrite-every", type=float, default=0,
                    help="replace a random object with a new version this often (seconds; 0: never)")
    ap.add_argument("--endpoint", default="", help="the server, for the overwrites")
    ap.add_argument("--bucket", default="")
    ap.add_argument("--versions-dir", default="", help="where each new version's bytes are kept")
    a = ap.parse_args()
    rc = run(a)
    sys.stdout.flush()
    # Hung readers are daemon threads stuck in the kernel: do not wait for them.
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
