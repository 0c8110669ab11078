#!/usr/bin/python3
# A stand-in for `tools/http_server --metrics` in the tests of tools/pooltop, pool_record and
# pool_plot: serves a Prometheus text exposition (format 0.0.4) of every libsock_* family for
# 2 shards, profiling on, so histograms included (with the engine's log-linear buckets), then
# the process-wide TLS families as engine/tls/stats.cc appends them (series told apart by
# labels other than shard: kind=, reason=).
#   fake_metrics_server.py PORT_FILE [--port N]
# Listens on 127.0.0.1, port 0 (the kernel picks one) unless --port, and writes the port to
# PORT_FILE once listening. Routes:
#   GET /metrics[?name=PREFIX]  the exposition; PREFIX keeps only the families it starts
#                               (family names as in the # TYPE lines, e.g. libsock_pool_)
#   GET /garbage                200 with an HTML body, for the "does not parse" errors
#   GET /hang                   no answer, ever (the connection stays open)
#   GET /trickle                200 announcing a MiB, then a byte every 0.1 s: each read
#                               succeeds long before a client's per-read timeout
#   GET /short                  200 announcing 5000 bytes, then 95 of the exposition and a close
#   GET /badchunk               200 chunked, then a chunk size that is not hex
#   GET /badstatus              no HTTP at all: an SSH server's greeting, then a close
#   GET /badexposition          200 with "# TYPE\n", a line prometheus_client's parser fails
#                               on with IndexError, not the ValueError of other bad lines
#   GET /badshard               /metrics, but for 7 shards labelled as BAD_SHARDS: numbers out
#                               of string order, and labels that are not numbers
#   GET /huge                   200 with no length, HUGE_MIB MiB of comment lines as fast
#                               as the client reads, and a close: over tools/pool_scrape.py's
#                               64 MiB cap
#   GET /hugelength             200 announcing 1 TiB, then one family and a close
#   GET /manylines[?lines=N]    200 with a gauge family of N lines (MANY_LINES by default: over
#                               tools/pool_scrape.py's cap on lines), each a short sample
# Each connection has its own thread, so that /hang and /trickle hold up nobody else.
# Request n of /metrics or /badshard (n = 1, 2, ...) grows the counters by a fixed step; shard
# s's figures are exact so that tests can look for them:
#   chunks 4(s+1), chunk bytes 2 MiB each, high water 90 / 140, hits 75% / 50% of checkouts,
#   queued 0.5 / 1.0 MiB, connections 10 / 15; outstanding 50(s+1) + 10(n mod 5) moves.
import argparse
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MIB = 1 << 20
SHARDS = (0, 1)
# /badshard's shard labels, as written in the exposition (a\\nb: a newline): shard i's figures
# are those of shard i above. Shown by shard, numbers first: 0 1 2 10 -1 'a\\nb' tls.
BAD_SHARDS = ("0", "1", "10", "2", "tls", "-1", "a\\nb")
# /huge's size: over the cap, not so far over that a client which reads it all takes long.
HUGE_MIB = 96
# /manylines' lines by default: over tools/pool_scrape.py's MAX_LINES (369,640), in 10 MB.
MANY_LINES = 400_000
# The engine's histograms (engine/histogram.h): log-linear buckets with upper bounds 1, 2, 3, 4,
# 6, 8, 12, ... up to 2^octaves, times a unit scale, "%.9g" in le; then +Inf.
# (name, octaves, scale, the first bucket with counts, each step's counts from there on)
HISTOGRAMS = (
    ("libsock_packet_lifetime_seconds", 26, 1e-6, 8, (1, 4, 8, 3, 1)),
    ("libsock_queue_time_seconds", 26, 1e-6, 12, (6, 3, 2, 1)),
    ("libsock_write_size_bytes", 30, 1, 10, (2, 9, 5, 1, 1)),
    ("libsock_flush_packets", 10, 1, 0, (9, 4, 2, 1)),
    ("libsock_connection_peak_queued_bytes", 36, 1, 24, (1, 2, 1)),
)


def bound(i):
    return i + 1 if i < 2 else (2 << (i // 2) if i % 2 else 3 << (i // 2 - 1))


def exposition(n, labels=tuple(map(str, SHARDS))):
    """The whole exposition after n requests, as (family name, text) pairs; labels: the shard
    label of each shard."""
    shards = range(len(labels))
    families = []

    def family(name, kind, help_text, rows):
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{metric}{{{labels}}} {value}" if labels else f"{metric} {value}"
                  for metric, labels, value in rows]
        families.append((name, "\n".join(lines) + "\n"))

    def per_shard(name, kind, help_text, value_of):
        family(name, kind, help_text,
               [(name, f'shard="{labels[s]}"', value_of(s)) for s in shards])

    checkouts = lambda s: 400 * (s + 1) * n
    hits = lambda s: checkouts(s) * (3 - s) // 4
    outstanding = lambda s: 50 * (s + 1) + 10 * (n % 5)
    returns = lambda s: checkouts(s) - outstanding(s)
    chunk_bytes = lambda s: 4 * (s + 1) * 2 * MIB

    per_shard("libsock_pool_checkouts_total", "counter", "Packets checked out.", checkouts)
    per_shard("libsock_pool_returns_total", "counter", "Packets returned.", returns)
    per_shard("libsock_pool_remote_returns_total", "counter",
              "Packets returned from other threads.", lambda s: returns(s) // 4)
    per_shard("libsock_pool_hits_total", "counter", "Checkouts served from the free list.", hits)
    per_shard("libsock_pool_misses_total", "counter", "Checkouts that carved a new packet.",
              lambda s: checkouts(s) - hits(s))
    per_shard("libsock_pool_chunks_freed_total", "counter", "Chunks given back.", lambda s: n // 3)
    per_shard("libsock_pool_refusals_total", "counter", "Checkouts refused at the cap.",
              lambda s: 0)
    per_shard("libsock_pool_alloc_failures_total", "counter", "Chunk allocations that failed.",
              lambda s: 0)
    per_shard("libsock_writes_direct_total", "counter", "Writes sent at once.", lambda s: 90 * n)
    per_shard("libsock_writes_queued_total", "counter", "Writes queued.", lambda s: 10 * n)
    per_shard("libsock_writev_calls_total", "counter", "writev calls.", lambda s: 12 * n)
    per_shard("libsock_writev_packets_total", "counter", "Packets sent by writev.",
              lambda s: 30 * n)
    per_shard("libsock_sendfile_calls_total", "counter", "sendfile calls.", lambda s: n)

    per_shard("libsock_pool_outstanding_packets", "gauge", "Packets checked out now.",
              outstanding)
    per_shard("libsock_pool_high_water_packets", "gauge", "Most packets ever out at once.",
              lambda s: 90 + 50 * s)
    per_shard("libsock_pool_chunks", "gauge", "Chunks held.", lambda s: 4 * (s + 1))
    per_shard("libsock_pool_chunk_bytes", "gauge", "Bytes of the chunks held.", chunk_bytes)
    per_shard("libsock_pool_packet_bytes", "gauge", "Bytes of one packet.", lambda s: 2048)
    per_shard("libsock_queued_bytes", "gauge", "Bytes queued for writing.",
              lambda s: (s + 1) * MIB // 2)
    per_shard("libsock_connections", "gauge", "Open connections.", lambda s: 10 + 5 * s)
    for stat, extra in (("active", 0), ("dirty", MIB // 4), ("muzzy", 0), ("resident", 2 * MIB),
                        ("mapped", 4 * MIB), ("retained", 8 * MIB)):
        per_shard(f"libsock_jemalloc_{stat}_bytes", "gauge", f"jemalloc's {stat} bytes.",
                  lambda s, extra=extra: chunk_bytes(s) + extra)
    # Process-wide, as engine/metrics.cc writes it (tools/pooltop takes either).
    family("libsock_profiling", "gauge", "1 while profiling is on.", [("libsock_profiling", "", 1)])
    family("libsock_process_resident_bytes", "gauge", "The process's resident set size.",
           [("libsock_process_resident_bytes", "",
             40 * MIB + sum(map(chunk_bytes, shards)) + (n % 7) * MIB // 4)])

    for name, octaves, scale, first, steps in HISTOGRAMS:
        rows = []
        for s in shards:
            shard = f'shard="{labels[s]}"'
            total = total_sum = 0
            for i in range(2 * octaves):
                step = steps[i - first] if 0 <= i - first < len(steps) else 0
                total += step * n * (s + 1)
                total_sum += step * n * (s + 1) * bound(i)
                rows.append((f"{name}_bucket", f'{shard},le="{bound(i) * scale:.9g}"', total))
            rows.append((f"{name}_bucket", f'{shard},le="+Inf"', total))
            rows.append((f"{name}_sum", shard, f"{total_sum * scale:.9g}"))
            rows.append((f"{name}_count", shard, total))
        family(name, "histogram", f"Distribution of {name}.", rows)

    family("libsock_tls_handshakes_total", "counter", "TLS handshakes completed.",
           [("libsock_tls_handshakes_total", 'kind="full"', 3 * n),
            ("libsock_tls_handshakes_total", 'kind="resumed"', n)])
    family("libsock_tls_handshake_failures_total", "counter", "TLS handshakes that failed.",
           [("libsock_tls_handshake_failures_total", f'reason="{reason}"', (i + 1) * n)
            for i, reason in enumerate(("protocol", "certificate", "timeout", "closed"))])
    rows, total = [], 0
    for micros, step in ((250, 0), (500, 1), (1000, 2), (2500, 1), (5000, 0)):
        total += step * n
        rows.append(("libsock_tls_handshake_seconds_bucket", f'le="{micros / 1e6:g}"', total))
    rows += [("libsock_tls_handshake_seconds_bucket", 'le="+Inf"', total),
             ("libsock_tls_handshake_seconds_sum", "", f"{0.004 * n:.6f}"),
             ("libsock_tls_handshake_seconds_count", "", total)]
    family("libsock_tls_handshake_seconds", "histogram", "Handshake times.", rows)
    family("libsock_tls_connections", "gauge", "Connections with the TLS layer now.",
           [("libsock_tls_connections", "", 2)])
    return families


class Handler(BaseHTTPRequestHandler):
    requests = 0
    lock = threading.Lock()  # over requests: each connection is served by its own thread
    never = threading.Event()  # never set: what /hang and /trickle wait on

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/metrics":
            with Handler.lock:
                Handler.requests += 1
                n = Handler.requests
            prefix = urllib.parse.parse_qs(url.query).get("name", [""])[0]
            body = "".join(text for name, text in exposition(n) if name.startswith(prefix))
            self.reply(200, "text/plain; version=0.0.4; charset=utf-8", body)
        elif url.path == "/badshard":
            with Handler.lock:
                Handler.requests += 1
                n = Handler.requests
            body = "".join(text for _, text in exposition(n, BAD_SHARDS))
            self.reply(200, "text/plain; version=0.0.4; charset=utf-8", body)
        elif url.path == "/garbage":
            self.reply(200, "text/html", "<html><body>Hello World!</body></html>\n")
        elif url.path == "/short":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(exposition(1)[0][1].encode()[:95])
        elif url.path == "/badchunk":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"zz\r\n# HELP\r\n")
        elif url.path == "/badstatus":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
        elif url.path == "/badexposition":
            self.reply(200, "text/plain; version=0.0.4; charset=utf-8", "# TYPE\n")
        elif url.path == "/huge":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.end_headers()  # HTTP/1.0 and no length: the body ends at the close
            block = b"# padding\n" * (MIB // 10) + b"#" * (MIB % 10 - 1) + b"\n"
            try:
                for _ in range(HUGE_MIB):
                    self.wfile.write(block)
            except OSError:
                pass  # the client stopped reading at its cap
        elif url.path == "/hugelength":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            try:
                self.wfile.write(exposition(1)[0][1].encode())
            except OSError:
                pass  # the client refused the length
        elif url.path == "/manylines":
            lines = int(urllib.parse.parse_qs(url.query).get("lines", [MANY_LINES])[0])
            self.reply(200, "text/plain; version=0.0.4; charset=utf-8",
                       "# TYPE libsock_many gauge\n" + 'libsock_many{shard="0"} 1\n' * (lines - 1))
        elif url.path == "/hang":
            Handler.never.wait()
        elif url.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(MIB))
            self.end_headers()
            try:
                for _ in range(MIB):
                    self.wfile.write(b"#")
                    self.wfile.flush()
                    Handler.never.wait(0.1)
            except OSError:
                pass  # the client gave up
        else:
            self.reply(404, "text/plain", "not found\n")

    def reply(self, status, content_type, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass  # the tests' output is for their own messages


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port_file")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    # Written then renamed: a waiting test must never read a half-written port.
    with open(args.port_file + ".tmp", "w") as f:
        f.write(f"{server.server_port}\n")
    os.rename(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
