#!/usr/bin/python3
# Writes bench/pool_profile.sh's REPORT.md (to stdout) from each scenario's run.csv (a
# tools/pool_record CSV) and load.txt (the load's output, then "load_end_s S").
#   bench/pool_report.py DIR SCENARIO...
import csv
import re
import sys
from collections import defaultdict

MIB = 1 << 20
WHAT = {
    "keepalive": "wrk -t2 -c64 -d10s, keep-alive",
    "pipelined": "wrk -t2 -c64 -d10s, 16 requests per write",
    "slow": "2,000 slow readers: 1,000 pipelined requests each, read 4 KiB per 100 ms",
    "files": "wrk -t2 -c16 -d10s on a 16 MiB static file",
    "churn": "wrk -t2 -c64 -d10s, Connection: close",
    "burst_idle": "wrk -t2 -c64 -d20s, Connection: close, then 15 s idle",
}
CHARTS = [
    ("outstanding", "packets checked out per shard: how many queued responses the pools hold"),
    ("chunk_bytes", "MiB of chunks each shard's pool holds: what the pools cost in memory"),
    ("rss_vs_pool", "the process's RSS beside all pools' chunks and their arenas' resident "
                    "bytes: how much of the process the pools explain"),
    ("packet_lifetime", "how long packets live, checkout to return (log-linear buckets)"),
    ("write_size", "bytes per sock_write call"),
]


def load(path):
    rows = defaultdict(dict)  # (metric, shard, le, labels) -> {t: v}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        # pool_record's files before its labels column lack that column.
        has_labels = "labels" in next(reader)
        for row in reader:
            if not has_labels:
                row = row[:4] + [""] + row[4:]
            if len(row) != 6:
                continue
            t, metric, shard, le, labels, value = row
            rows[(metric, shard, le, labels)][float(t)] = float(value)
    return rows


def total(rows, metric):
    """{t: sum over shards (and other labels)} of a series that is not a bucket."""
    out = defaultdict(float)
    for (m, shard, le, labels), series in rows.items():
        if m == metric and not le:
            for t, v in series.items():
                out[t] += v
    return dict(sorted(out.items()))


def at(series, t):
    """The value of the last sample at or before t."""
    best = None
    for ts, v in series.items():
        if ts <= t:
            best = v
    return best if best is not None else next(iter(series.values()), 0)


def quantile(rows, family, q):
    """q-quantile (bucket upper bound) of the last sample's histogram, summed over shards."""
    buckets = defaultdict(float)
    last_t = max((max(s) for (m, *_), s in rows.items() if m == family + "_bucket" and s),
                 default=None)
    if last_t is None:
        return None
    for (m, shard, le, labels), s in rows.items():
        if m == family + "_bucket":
            buckets[float(le)] += s.get(last_t, 0)
    bounds = sorted(buckets)
    count = buckets[bounds[-1]] if bounds else 0
    if not count:
        return None
    for b in bounds:
        if buckets[b] >= q * count:
            return b
    return None


def fmt_seconds(s):
    if s is None:
        return "-"
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.1f} s"


def scenario(directory, name):
    rows = load(f"{directory}/{name}/run.csv")
    text = open(f"{directory}/{name}/load.txt").read()
    load_end = float(re.search(r"load_end_s ([\d.]+)", text).group(1))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = re.search(r"Socket errors:.*|Non-2xx.*", text)
    rss = total(rows, "libsock_process_resident_bytes")
    outstanding = total(rows, "libsock_pool_outstanding_packets")
    chunks = total(rows, "libsock_pool_chunk_bytes")
    queued = total(rows, "libsock_queued_bytes")
    resident = total(rows, "libsock_jemalloc_resident_bytes")
    last = max(rss)
    checkouts = at(total(rows, "libsock_pool_checkouts_total"), last)
    hits = at(total(rows, "libsock_pool_hits_total"), last)
    remote = at(total(rows, "libsock_pool_remote_returns_total"), last)
    calls = at(total(rows, "libsock_writev_calls_total"), last)
    packets = at(total(rows, "libsock_writev_packets_total"), last)
    direct = at(total(rows, "libsock_writes_direct_total"), last)
    queued_writes = at(total(rows, "libsock_writes_queued_total"), last)
    sendfile = at(total(rows, "libsock_sendfile_calls_total"), last)
    print(f"## {name}: {WHAT.get(name, name)}\n")
    line = rps.group(1) + " requests/s" if rps else text.strip().splitlines()[0]
    print(f"Load: {line}{'; ' + errors.group(0) if errors else ''}.\n")
    print("| figure | value |\n| --- | --- |")
    print(f"| RSS before the load / peak / at the end | {at(rss, 1.9) / MIB:.1f} / "
          f"{max(rss.values()) / MIB:.1f} / {rss[last] / MIB:.1f} MiB |")
    print(f"| packets out, peak (all shards) | {max(outstanding.values()):.0f} |")
    print(f"| pool chunks, peak / at the end | {max(chunks.values()) / MIB:.2f} / "
          f"{chunks[max(chunks)] / MIB:.2f} MiB |")
    print(f"| pool arenas resident, peak / at the end | {max(resident.values()) / MIB:.2f} / "
          f"{resident[max(resident)] / MIB:.2f} MiB |")
    print(f"| queued bytes, peak | {max(queued.values()) / MIB:.2f} MiB |")
    print(f"| checkouts; hit rate; returned by other threads | {checkouts:.0f}; "
          f"{100 * hits / checkouts if checkouts else 100:.1f}%; {remote:.0f} |")
    print(f"| writes direct / queued | {direct:.0f} / {queued_writes:.0f} |")
    print(f"| writev calls; packets per call | {calls:.0f}; "
          f"{packets / calls if calls else 0:.2f} |")
    print(f"| sendfile calls | {sendfile:.0f} |")
    print(f"| packet lifetime p50 / p99 | "
          f"{fmt_seconds(quantile(rows, 'libsock_packet_lifetime_seconds', 0.5))} / "
          f"{fmt_seconds(quantile(rows, 'libsock_packet_lifetime_seconds', 0.99))} |")
    p50 = quantile(rows, "libsock_write_size_bytes", 0.5)
    print(f"| write size p50 | {'-' if p50 is None else f'{p50:.0f} B'} |\n")
    if name == "burst_idle":
        before = at(rss, 1.9)
        print("RSS after the burst (the load ended at "
              f"{load_end:.1f} s of the recording):\n")
        print("| seconds after the burst | RSS | over the pre-burst RSS | pool chunks | "
              "pool arenas resident |\n| --- | --- | --- | --- | --- |")
        for k in (0, 1, 2, 5, 10, 14):
            t = load_end + k
            print(f"| +{k} | {at(rss, t) / MIB:.2f} MiB | {(at(rss, t) - before) / MIB:+.2f} MiB | "
                  f"{at(chunks, t) / MIB:.2f} MiB | {at(resident, t) / MIB:.2f} MiB |")
        print()
    charts = [f"[{c}]({name}/{c}.svg) ({desc})" for c, desc in CHARTS]
    print("Charts (SVG; PNG beside each): " + "; ".join(charts) + ".\n")


def main():
    directory, names = sys.argv[1], sys.argv[2:]
    print("# Packet pool profile: tools/http_server, 2 shards\n")
    print("Written by `bench/pool_profile.sh` (LIBSOCK_PROFILE=1, `--metrics`, recorded every "
          "0.5 s by `tools/pool_record`, drawn by `tools/pool_plot`). Figures sum both "
          "shards; quantiles are bucket upper bounds of the log-linear histograms.\n")
    for name in names:
        scenario(directory, name)


if __name__ == "__main__":
    main()
