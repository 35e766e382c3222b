"""Measures what scraping /metrics costs sequential hit throughput (driven by
scripts/metrics-overhead.sh, which sets up the server and the mounts).

  run --off MNT --on MNT --addr HOST:PORT --file REL --runs N --seconds S
      [--drop-pages] [--interval-ms MS] [--pid-off PID] [--pid-on PID]

Per round, three measurements of S seconds each, in turn: the mount without metrics
("off"), the mount with metrics nobody scrapes ("on"), and the same mount scraped every
MS milliseconds by another process ("scraped"). Each measurement reads REL from start to
end again and again (1 MiB reads); --drop-pages drops the file's kernel page cache before
each pass, so every read goes to the mount instead of the kernel's copy. Prints one line
per measurement, then medians and ratios; the last line is JSON.

  scrape HOST:PORT MS     (used by run) GET /metrics every MS ms on one keep-alive
                          connection, as Prometheus does, until SIGTERM; prints JSON.
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time

CHUNK = 1 << 20


def read_for(path, seconds, drop):
    """Reads `path` sequentially, pass after pass, for about `seconds`: MB/s."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        fd = os.open(path, os.O_RDONLY)
        try:
            if drop:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            while True:
                n = os.readv(fd, [view])
                if n == 0:
                    break
                total += n
        finally:
            os.close(fd)
    return total / (time.perf_counter() - start) / 1e6


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(addr, interval_ms):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    count, failed, size, busy = 0, 0, 0, 0.0
    interval = interval_ms / 1000
    start = time.perf_counter()
    tick = start
    while not stop:
        t = time.perf_counter()
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200:
                count += 1
                size = len(body)
            else:
                failed += 1
        except (OSError, http.client.HTTPException):
            failed += 1
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        busy += time.perf_counter() - t
        tick += interval
        pause = tick - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:
            tick = time.perf_counter()
    elapsed = time.perf_counter() - start
    json.dump(
        {
            "scrapes": count,
            "failed": failed,
            "per_second": count / elapsed if elapsed else 0,
            "mean_ms": busy / max(count + failed, 1) * 1000,
            "bytes": size,
        },
        sys.stdout,
    )


def run(a):
    results = {"off": [], "on": [], "scraped": []}
    cpu = {"off": [], "on": [], "scraped": []}
    scrapes = []
    for r in range(a.runs):
        # Every other round in reverse order, so a machine that speeds up or slows down
        # during the run favours no configuration.
        order = ("off", "on", "scraped") if r % 2 == 0 else ("scraped", "on", "off")
        for cfg in order:
            mnt = a.off if cfg == "off" else a.on
            pid = a.pid_off if cfg == "off" else a.pid_on
            scraper = None
            if cfg == "scraped":
                scraper = subprocess.Popen(
                    [sys.executable, __file__, "scrape", a.addr, str(a.interval_ms)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                time.sleep(0.2)
            c0 = cpu_seconds(pid)
            mbs = read_for(os.path.join(mnt, a.file), a.seconds, a.drop_pages)
            used = cpu_seconds(pid) - c0
            extra = ""
            if scraper:
                scraper.send_signal(signal.SIGTERM)
                out, _ = scraper.communicate(timeout=30)
                s = json.loads(out)
                scrapes.append(s)
                extra = (
                    f"  {s['scrapes']} scrapes ({s['per_second']:.0f}/s, "
                    f"{s['mean_ms']:.2f} ms each, {s['bytes']} bytes, {s['failed']} failed)"
                )
            results[cfg].append(mbs)
            cpu[cfg].append(used / a.seconds)
            print(
                f"run {r + 1} {cfg:8} {mbs:10.1f} MB/s  mount CPU {used / a.seconds:5.1%}{extra}",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in results.items()}
    # Ratios within each round (measured seconds apart), then their median: steadier
    # on a shared machine than the ratio of medians taken minutes apart.
    paired = {
        "scraped_over_on": statistics.median(
            s / o for s, o in zip(results["scraped"], results["on"])
        ),
        "on_over_off": statistics.median(
            o / f for o, f in zip(results["on"], results["off"])
        ),
    }
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    ratio_on = med["on"] / med["off"]
    ratio_scraped = med["scraped"] / med["on"]
    ratio_total = med["scraped"] / med["off"]
    print(
        f"medians of {a.runs}: off {med['off']:.1f} MB/s, on {med['on']:.1f} MB/s, "
        f"scraped {med['scraped']:.1f} MB/s"
    )
    print(
        f"ratio of medians: scraped/on {ratio_scraped:.4f}, on/off {ratio_on:.4f}, "
        f"scraped/off {ratio_total:.4f}"
    )
    print(
        f"median of per-round ratios: scraped/on {paired['scraped_over_on']:.4f} "
        f"(scraping costs {(1 - paired['scraped_over_on']) * 100:.2f}%), "
        f"on/off {paired['on_over_off']:.4f}"
    )
    print(
        "mount process CPU (median, share of one core): "
        + ", ".join(f"{k} {v:.1%}" for k, v in cpu_med.items())
    )
    print(
        json.dumps(
            {
                "samples": results,
                "mount_cpu": cpu,
                "medians": med,
                "scraped_over_on": ratio_scraped,
                "on_over_off": ratio_on,
                "scraped_over_off": ratio_total,
                "paired": paired,
                "mount_cpu_median": cpu_med,
                "scrapes": scrapes,
            }
        )
    )


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--off", required=True)
    r.add_argument("--on", required=True)
    r.add_argument("--addr", required=True)
    r.add_argument("--file", required=True)
    r.add_argument("--runs", type=int, default=5)
    r.add_argument("--seconds", type=float, default=5)
    r.add_argument("--interval-ms", type=float, default=10)
    r.add_argument("--drop-pages", action="store_true")
    r.add_argument("--pid-off", type=int, default=0)
    r.add_argument("--pid-on", type=int, default=0)
    s = sub.add_parser("scrape")
    s.add_argument("addr")
    s.add_argument("interval_ms", type=float)
    a = p.parse_args()
    if a.cmd == "scrape":
        scrape(a.addr, a.interval_ms)
    else:
        run(a)


if __name__ == "__main__":
    main()
