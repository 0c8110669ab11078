#!/usr/bin/python3
# The checks of tests/tools/metrics_endpoint_test.sh against a real `tools/http_server
# --metrics` (2 shards, LIBSOCK_PROFILE=1), and the load that makes its packets queue.
#   check_exposition.py load PORT CONNECTIONS REQUESTS
#       CONNECTIONS connections with a 4 KiB SO_RCVBUF each send REQUESTS pipelined GET / in
#       one write and read nothing until the server's libsock_writes_queued_total has grown
#       (their responses queued), then read every response and close
#   check_exposition.py exposition PORT    GET /metrics: content type, every family with HELP
#                                          and TYPE, both shards, the histograms' buckets
#   check_exposition.py idle PORT          polls /metrics until no connection but the scrape's
#                                          own is open, then checkouts - returns == outstanding
#   check_exposition.py filter PORT        GET /metrics?name=libsock_pool_out: that one family
#   check_exposition.py status PORT        GET /status: HTML with the table and a JSON block
# Exits 0 when the checks pass; else 1, with what failed on stderr.
import html
import json
import math
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

SHARDS = ("0", "1")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
COUNTERS = (
    "libsock_pool_checkouts_total",
    "libsock_pool_returns_total",
    "libsock_pool_remote_returns_total",
    "libsock_pool_hits_total",
    "libsock_pool_misses_total",
    "libsock_pool_chunks_freed_total",
    "libsock_pool_refusals_total",
    "libsock_pool_alloc_failures_total",
    "libsock_writes_direct_total",
    "libsock_writes_queued_total",
    "libsock_writev_calls_total",
    "libsock_writev_packets_total",
    "libsock_sendfile_calls_total",
)
SHARD_GAUGES = (
    "libsock_pool_outstanding_packets",
    "libsock_pool_high_water_packets",
    "libsock_pool_chunks",
    "libsock_pool_chunk_bytes",
    "libsock_pool_packet_bytes",
    "libsock_queued_bytes",
    "libsock_connections",
    "libsock_loop_iteration_longest_seconds",
) + tuple(
    f"libsock_jemalloc_{kind}_bytes"
    for kind in ("active", "dirty", "muzzy", "resident", "mapped", "retained")
)
PROCESS_GAUGES = ("libsock_profiling", "libsock_process_resident_bytes")
HISTOGRAMS = (
    "libsock_packet_lifetime_seconds",
    "libsock_queue_time_seconds",
    "libsock_write_size_bytes",
    "libsock_flush_packets",
    "libsock_connection_peak_queued_bytes",
)
# Always on (not the profiler's): the loop's busy time per iteration.
LOOP_HISTOGRAM = "libsock_loop_iteration_seconds"
DEADLINE_S = 30


class Failed(Exception):
    pass


def check(ok, message):
    if not ok:
        raise Failed(message)


def get(port, path, timeout=10):
    """(status, Content-Type, body) of GET http://127.0.0.1:PORT/PATH."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type"), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode(errors="replace")


def scrape(port, query=""):
    """The families of /metrics[QUERY] by name (counters' without _total, as the parser has
    them), after checking the status, the content type and that no name comes twice."""
    status, content_type, body = get(port, "/metrics" + query)
    check(status == 200, f"GET /metrics{query}: status {status}:\n{body}")
    check(content_type == CONTENT_TYPE,
          f"GET /metrics{query}: Content-Type {content_type!r}, not {CONTENT_TYPE!r}")
    try:
        families = list(text_string_to_metric_families(body))
    except Exception as e:
        raise Failed(f"GET /metrics{query} does not parse: {e!r}:\n{body}")
    by_name = {}
    for family in families:
        # A family whose lines are not one group comes out of the parser twice.
        check(family.name not in by_name,
              f"family {family.name} comes twice (its lines are not one group)")
        by_name[family.name] = family
    return by_name, body


def family_of(families, name):
    """The family NAME with its HELP and TYPE checked."""
    kind = ("counter" if name in COUNTERS else
            "histogram" if name in HISTOGRAMS + (LOOP_HISTOGRAM,) else "gauge")
    key = name[: -len("_total")] if kind == "counter" else name
    check(key in families, f"no family {name}")
    family = families[key]
    check(family.type == kind, f"{name}: TYPE {family.type}, not {kind}")
    check(family.documentation.strip(), f"{name}: no HELP text")
    return family


def per_shard(family, sample_name):
    """{shard: value} of the samples SAMPLE_NAME, checking that shards 0 and 1 have one each."""
    values = {}
    for sample in family.samples:
        if sample.name != sample_name:
            continue
        check(set(sample.labels) == {"shard"},
              f"{sample_name}: labels {sample.labels}, not just shard")
        shard = sample.labels["shard"]
        check(shard not in values, f"{sample_name}: shard {shard} twice")
        values[shard] = sample.value
    check(set(values) == set(SHARDS), f"{sample_name}: shards {sorted(values)}, not 0 and 1")
    return values


def check_histogram(family):
    name = family.name
    buckets = {shard: [] for shard in SHARDS}
    for sample in family.samples:
        check(sample.name in (name + "_bucket", name + "_sum", name + "_count"),
              f"{name}: a sample {sample.name}")
        if sample.name == name + "_bucket":
            shard = sample.labels.get("shard")
            check(shard in buckets and set(sample.labels) == {"shard", "le"},
                  f"{name}_bucket: labels {sample.labels}")
            buckets[shard].append((sample.labels["le"], sample.value))
    counts = per_shard(family, name + "_count")
    sums = per_shard(family, name + "_sum")
    for shard in SHARDS:
        rows = buckets[shard]
        where = f'{name} shard="{shard}"'
        check(rows, f"{where}: no buckets")
        check(rows[-1][0] == "+Inf", f"{where}: the last le is {rows[-1][0]}, not +Inf")
        bounds = [float(le) for le, _ in rows]
        for (a, x), (b, y) in zip(zip(bounds, rows), zip(bounds[1:], rows[1:])):
            check(a < b, f"{where}: le {x[0]} then {y[0]}, not ascending")
            check(x[1] <= y[1], f"{where}: bucket le={x[0]} has {x[1]}, le={y[0]} has {y[1]}: "
                                "counts not cumulative")
        check(rows[-1][1] == counts[shard],
              f"{where}: +Inf bucket {rows[-1][1]} != _count {counts[shard]}")
        check(sums[shard] >= 0 and not math.isnan(sums[shard]), f"{where}: _sum {sums[shard]}")


def cmd_exposition(port):
    families, body = scrape(port)
    for name in COUNTERS + SHARD_GAUGES:
        family = family_of(families, name)
        for shard, value in per_shard(family, name).items():
            check(value >= 0, f'{name}{{shard="{shard}"}} is {value}')
    for name in PROCESS_GAUGES:
        family = family_of(families, name)
        check(len(family.samples) == 1 and family.samples[0].labels == {},
              f"{name}: samples {family.samples}, not one without labels")
    profiling = families["libsock_profiling"].samples[0].value
    check(profiling == 1, f"libsock_profiling is {profiling} with LIBSOCK_PROFILE=1")
    check(families["libsock_process_resident_bytes"].samples[0].value > 0,
          "libsock_process_resident_bytes is not > 0")
    for name in HISTOGRAMS + (LOOP_HISTOGRAM,):
        check_histogram(family_of(families, name))
    # Every family of the body is typed: a sample the parser could not put in its family
    # comes out as an untyped family of its own.
    for family in families.values():
        check(family.type != "unknown", f"{family.name}: no TYPE (or a stray sample)")
    print(f"exposition: {len(families)} families, {body.count(chr(10))} lines")


def totals(port):
    """{name: {shard: value}} of the per-shard pool, queue and connection figures."""
    families, _ = scrape(port)
    names = ("libsock_pool_checkouts_total", "libsock_pool_returns_total",
             "libsock_pool_outstanding_packets", "libsock_pool_high_water_packets",
             "libsock_queued_bytes", "libsock_connections", "libsock_writes_queued_total")
    return {name: per_shard(family_of(families, name), name) for name in names}


def cmd_idle(port):
    # The scrape's own connection is open while the server takes the snapshot, so idle is
    # one connection in all.
    deadline = time.monotonic() + DEADLINE_S
    while True:
        figures = totals(port)
        connections = sum(figures["libsock_connections"].values())
        if connections == 1:
            break
        check(time.monotonic() < deadline,
              f"still {connections} connections after {DEADLINE_S} s: {figures}")
        time.sleep(0.1)
    for shard in SHARDS:
        out = figures["libsock_pool_checkouts_total"][shard]
        back = figures["libsock_pool_returns_total"][shard]
        outstanding = figures["libsock_pool_outstanding_packets"][shard]
        check(out - back == outstanding,
              f"shard {shard} at idle: checkouts {out} - returns {back} != outstanding "
              f"{outstanding}: {figures}")
        check(outstanding == 0, f"shard {shard} at idle: {outstanding} packets outstanding")
        check(figures["libsock_queued_bytes"][shard] == 0,
              f"shard {shard} at idle: {figures['libsock_queued_bytes'][shard]} bytes queued")
    checkouts = sum(figures["libsock_pool_checkouts_total"].values())
    check(checkouts > 0, f"no packet was ever checked out (the load queued nothing): {figures}")
    high_water = sum(figures["libsock_pool_high_water_packets"].values())
    check(high_water > 0, f"high water 0 after {checkouts} checkouts: {figures}")
    print(f"idle: {checkouts:g} checkouts, all returned; high water {high_water:g}")


def cmd_filter(port):
    families, body = scrape(port, "?name=libsock_pool_out")
    check(list(families) == ["libsock_pool_outstanding_packets"],
          f"?name=libsock_pool_out gives families {list(families)}:\n{body}")
    per_shard(family_of(families, "libsock_pool_outstanding_packets"),
              "libsock_pool_outstanding_packets")
    print("filter: only libsock_pool_outstanding_packets")


def cmd_status(port):
    status, content_type, body = get(port, "/status")
    check(status == 200, f"GET /status: status {status}:\n{body}")
    check(content_type is not None and content_type.split(";")[0].strip() == "text/html",
          f"GET /status: Content-Type {content_type!r}")
    check("Packet pools" in body, f"GET /status has no 'Packet pools':\n{body}")
    blocks = re.findall(r"<pre>(.*?)</pre>", body, re.S)
    check(len(blocks) == 1, f"GET /status has {len(blocks)} <pre> blocks, not 1:\n{body}")
    try:
        doc = json.loads(html.unescape(blocks[0]))
    except ValueError as e:
        raise Failed(f"the <pre> block of /status is not JSON: {e}:\n{blocks[0]}")
    check(doc.get("profiling") is True, f"/status JSON: profiling is {doc.get('profiling')!r}")
    shards = doc.get("shards")
    check(isinstance(shards, list) and len(shards) == 2,
          f"/status JSON: shards is not a list of 2:\n{blocks[0]}")
    for i, shard in enumerate(shards):
        check(shard.get("shard") == i, f"/status JSON: shards[{i}] is shard {shard.get('shard')}")
        histograms = shard.get("histograms")
        check(isinstance(histograms, dict), f"/status JSON: shards[{i}] has no histograms")
        want = {name[len("libsock_"):] for name in HISTOGRAMS}
        check(set(histograms) == want,
              f"/status JSON: shards[{i}]'s histograms are {sorted(histograms)}")
        loop = shard.get(LOOP_HISTOGRAM[len("libsock_"):])
        check(isinstance(loop, dict) and loop.get("count", 0) > 0,
              f"/status JSON: shards[{i}] has no loop iterations: {loop!r}")
        longest = shard.get("loop_iteration_longest_seconds")
        check(isinstance(longest, (int, float)) and longest >= 0,
              f"/status JSON: shards[{i}]'s longest loop iteration is {longest!r}")
    print("status: HTML with the table, JSON with 2 shards and their histograms")


def cmd_load(port, connections, requests):
    def writes_queued():
        return sum(totals(port)["libsock_writes_queued_total"].values())

    before = writes_queued()
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    socks = []
    for _ in range(connections):
        s = socket.socket()
        # A small receive window, set before connect: the responses back up into the server.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(DEADLINE_S)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    errors = []

    def send(s):
        try:
            s.sendall(request * requests)
        except OSError as e:
            errors.append(e)

    senders = [threading.Thread(target=send, args=(s,)) for s in socks]
    for t in senders:
        t.start()
    # Read nothing until the server says that writes queued.
    deadline = time.monotonic() + DEADLINE_S
    while writes_queued() == before:
        check(time.monotonic() < deadline, f"no write queued in {DEADLINE_S} s")
        time.sleep(0.05)
    response_end = b"\r\n\r\nHello World!"
    for i, s in enumerate(socks):
        got = b""
        while got.count(response_end) < requests:
            try:
                data = s.recv(1 << 20)
            except socket.timeout:
                data = b""
            check(data, f"connection {i}: {got.count(response_end)} of {requests} responses, "
                        "then the connection closed or went quiet")
            got += data
        check(got.count(response_end) == requests and got.endswith(response_end),
              f"connection {i}: more than the {requests} responses")
        check(got.count(b"HTTP/1.1 200 OK\r\n") == requests, f"connection {i}: not all 200")
    for t in senders:
        t.join(DEADLINE_S)
    check(not errors, f"sending the requests: {errors}")
    for s in socks:
        s.close()
    print(f"load: {connections} x {requests} pipelined requests, all answered; "
          f"{writes_queued() - before:g} writes queued")


def main(argv):
    commands = {"exposition": cmd_exposition, "idle": cmd_idle, "filter": cmd_filter,
                "status": cmd_status}
    try:
        if len(argv) == 5 and argv[1] == "load":
            cmd_load(int(argv[2]), int(argv[3]), int(argv[4]))
        elif len(argv) == 3 and argv[1] in commands:
            commands[argv[1]](int(argv[2]))
        else:
            print("usage: check_exposition.py load PORT CONNECTIONS REQUESTS\n"
                  "       check_exposition.py exposition|idle|filter|status PORT", file=sys.stderr)
            return 2
    except Failed as e:
        print(f"check_exposition.py {argv[1]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
