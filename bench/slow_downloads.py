#!/usr/bin/python3
# Slow readers that keep coming, for bench/soak.sh: N connections, each sending PIPELINE
# requests `GET PATH` in one write and reading the responses at about READ bytes every 0.1 s
# (each connection its own rate, between READ/2 and 3*READ/2, so that they do not finish in
# step; its receive buffer sized to that rate, so the server's bytes wait on the server's side:
# in its packet pool for small responses, in its send buffer and file segment for a file). A
# connection that has read all its responses (each 200, then exactly Content-Length body
# bytes) closes and a new one takes its place, until SECONDS have passed; then every
# connection closes, and the responses still in flight are counted neither way.
#
# An error is a connect that fails, a response that is not 200 or not HTTP, bytes after the
# last response, or a connection the server closes or resets before its responses are
# complete: a reader that keeps reading must not be cut off (issue 10, section 1).
# Prints one summary line (and the first errors); exits 1 if there was any error.
#   bench/slow_downloads.py PORT PATH [N=256] [READ=32768] [SECONDS=60] [PIPELINE=1]
import random
import socket
import sys
import time

TICK = 0.1        # seconds between two reads of a connection
SHOWN_ERRORS = 5  # errors described one by one; the rest are only counted

given = sys.argv[1:]
if len(given) < 2:
    sys.exit("usage: slow_downloads.py PORT PATH [N=256] [READ=32768] [SECONDS=60] [PIPELINE=1]")
port, path = int(given[0]), given[1]
n, per_read, seconds, pipeline = [int(a) for a in given[2:]] + [256, 32768, 60, 1][len(given) - 2:]
request = f"GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode() * pipeline
rates = random.Random(1)  # the same spread of rates every run


class Connection:
    """One connection and the responses it still owes its reader."""

    bytes_read = 0  # over every connection

    def __init__(self):
        self.started = time.monotonic()
        self.read_size = rates.randrange(per_read // 2, per_read * 3 // 2 + 1)
        self.responses_left = pipeline
        self.head = b""         # the part of a response head read so far
        self.body_left = None   # body bytes of the current response still to come; None in a head
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.read_size)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(request)
        self.sock.setblocking(False)

    def read(self):
        """Reads once. Returns None while responses are due, "done" once all are read whole,
        or an error message."""
        try:
            data = self.sock.recv(self.read_size)
        except BlockingIOError:
            return None
        except OSError as e:
            return f"{e.strerror} after {self.progress()}"
        if not data:
            return f"closed by the server after {self.progress()}"
        Connection.bytes_read += len(data)
        at = 0
        while at < len(data):
            if not self.responses_left:
                return f"{len(data) - at} bytes after the last response"
            if self.body_left is None:
                self.head += data[at:]
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return None
                at = len(data) - (len(self.head) - end - 4)  # where the body starts in data
                error = self.parse_head(self.head[:end].decode("latin-1"))
                if error:
                    return error
                self.head = b""
            take = min(self.body_left, len(data) - at)
            self.body_left -= take
            at += take
            if self.body_left == 0:
                self.body_left = None
                self.responses_left -= 1
        return None if self.responses_left or self.body_left is not None else "done"

    def parse_head(self, head):
        """Sets body_left from a response head; returns an error message or None."""
        lines = head.split("\r\n")
        if not lines[0].startswith("HTTP/1.1 200 "):
            return f"status line {lines[0]!r}"
        length = [l.split(":", 1)[1] for l in lines[1:] if l.lower().startswith("content-length:")]
        if len(length) != 1:
            return "not exactly one Content-Length"
        self.body_left = int(length[0])
        return None

    def progress(self):
        where = "in a head" if self.body_left is None else f"{self.body_left} body bytes short"
        return (f"{time.monotonic() - self.started:.1f} s, {pipeline - self.responses_left} of"
                f" {pipeline} responses, {where}")


responses = connections = 0
errors = []
live = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    while len(live) < n:
        try:
            live.append(Connection())
            connections += 1
        except OSError as e:
            errors.append(f"connect: {e}")
            break
    for c in list(live):
        outcome = c.read()
        if outcome is None:
            continue
        live.remove(c)
        c.sock.close()
        if outcome == "done":
            responses += pipeline
        else:
            responses += pipeline - c.responses_left
            errors.append(outcome)
    time.sleep(TICK)
for c in live:
    c.sock.close()

print(f"slow_downloads: {connections} connections, {responses} responses of {path} read whole,"
      f" {Connection.bytes_read / seconds / 1e6:.1f} MB/s, {len(errors)} errors")
for e in errors[:SHOWN_ERRORS]:
    print(f"  error: {e}")
sys.exit(1 if errors else 0)
