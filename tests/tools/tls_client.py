#!/usr/bin/python3
"""Python's ssl module as an HTTPS client of tools/http_server, for http_server_tls_test.

  tls_client.py verify PORT CAFILE [tls1.2|tls1.3]  one GET / with the certificate verified
                                                   against CAFILE for "localhost", ALPN
                                                   offered h2 and http/1.1
  tls_client.py resume PORT CAFILE tls1.2|tls1.3   two connections, the second with the
                                                   first's session
  tls_client.py pipeline PORT CAFILE               two GETs in one write on one connection

Prints key=value lines (version, alpn, reused, status, body) for the test to check; any
failure is a Python traceback and exit status 1. Every socket call times out after 10 s.
"""
import socket
import ssl
import sys

TIMEOUT_S = 10
VERSIONS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}


def context(cafile, version=None):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if version:
        ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
    return ctx


def connect(ctx, port, session=None):
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    return ctx.wrap_socket(raw, server_hostname="localhost", session=session)


def request(path="/", close=False):
    return ("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: %s\r\n\r\n" %
            (path, "close" if close else "keep-alive")).encode()


def read_response(conn, pending):
    """One response (head, then Content-Length bytes) from pending + conn's bytes.
    Returns (status line, body, bytes left over)."""
    while b"\r\n\r\n" not in pending:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError("the server closed inside a response head")
        pending += chunk
    head, rest = pending.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError("the server closed inside a body")
        rest += chunk
    return lines[0], rest[:length], rest[length:]


def describe(conn, status, body):
    print("version=%s" % conn.version())
    print("alpn=%s" % conn.selected_alpn_protocol())
    print("status=%s" % status)
    print("body=%s" % body.decode())


def verify(port, cafile, version=None):
    conn = connect(context(cafile, version), port)
    conn.sendall(request())
    status, body, _ = read_response(conn, b"")
    describe(conn, status, body)
    conn.close()


def resume(port, cafile, version):
    ctx = context(cafile, version)
    first = connect(ctx, port)
    first.sendall(request())
    read_response(first, b"")  # with TLS 1.3 the ticket comes after the handshake
    # The second connection starts while the first is open: closing it without close_notify
    # would make OpenSSL mark the session not resumable.
    second = connect(ctx, port, session=first.session)
    second.sendall(request())
    status, body, _ = read_response(second, b"")
    print("first_reused=%s" % first.session_reused)
    print("reused=%s" % second.session_reused)
    describe(second, status, body)
    second.close()
    first.close()


def pipeline(port, cafile):
    conn = connect(context(cafile), port)
    conn.sendall(request("/") + request("/missing"))  # one write, one TLS record
    pending = b""
    for _ in range(2):
        status, body, pending = read_response(conn, pending)
        print("status=%s" % status)
        print("body=%s" % body.decode())
    print("left=%d" % len(pending))
    conn.close()


def main(argv):
    command, port, cafile = argv[1], int(argv[2]), argv[3]
    if command == "verify":
        verify(port, cafile, argv[4] if len(argv) > 4 else None)
    elif command == "resume":
        resume(port, cafile, argv[4])
    elif command == "pipeline":
        pipeline(port, cafile)
    else:
        sys.exit("unknown command " + command)


if __name__ == "__main__":
    main(sys.argv)
