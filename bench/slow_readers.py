#!/usr/bin/python3
# Slow readers for bench/pool_profile.sh: N connections, each with a small receive buffer,
# pipeline R requests in one write and then read slowly (READ bytes per connection every
# 100 ms), so that the server's responses queue in its packet pools and drain at the
# readers' pace. Exits once every response byte has been read (or DEADLINE seconds passed).
#   bench/slow_readers.py PORT [N=2000] [R=600] [READ=4096] [DEADLINE=60]
import select
import socket
import sys
import time

given = [int(a) for a in sys.argv[1:]]
defaults = [0, 2000, 600, 4096, 60]
port, n, requests, per_read, deadline = given + defaults[len(given):]
request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n" * requests

conns = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    conns.append(s)
for s in conns:
    s.setblocking(True)
    s.sendall(request)
    s.setblocking(False)

# Each response ends its body with "Hello World!": count them.
marker = b"Hello World!"
seen = {s: 0 for s in conns}
tail = {s: b"" for s in conns}
end = time.monotonic() + deadline
while seen and time.monotonic() < end:
    for s in list(seen):
        try:
            data = s.recv(per_read)
        except BlockingIOError:
            continue
        if not data:
            del seen[s]
            continue
        buf = tail[s] + data
        seen[s] += buf.count(marker)
        tail[s] = buf[-(len(marker) - 1):]
        if seen[s] >= requests:
            del seen[s]
    time.sleep(0.1)
for s in conns:
    s.close()
print(f"slow_readers: {n - len(seen)} of {n} connections read all {requests} responses")
sys.exit(1 if seen else 0)
