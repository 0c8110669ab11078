#!/usr/bin/python3
"""Writes the TLS seeds of tls_unwrap_fuzz (tests/fuzz/corpus/tls_unwrap_fuzz/): what
`openssl s_client` sends first (its ClientHello, TLS 1.3 and 1.2 only) and what `openssl
s_server` answers to it (the server's first flight), caught by a relay between the two on
loopback. Each seed is the target's first byte (the mode and chunk sizes: see
tls_unwrap_fuzz.cc) followed by the captured bytes. A ClientHello holds no secret, and the
server's flight only a throwaway self-signed certificate made here.

  tests/fuzz/capture_tls_seeds.py [OUTPUT_DIR]   (default: the corpus directory)
"""
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

RAW_SERVER = 0  # input: what a client sends to a sock_tls_accept connection
RAW_CLIENT = 1  # input: what a server answers a sock_tls_connect ClientHello with
CHUNK_WHOLE = 7 << 2  # chunk sizes: the whole input at once
CHUNK_ONE = 0 << 2  # one byte per chunk


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_for(sock, seconds):
    """What arrives on sock within `seconds` of quiet (a flight can span several reads)."""
    data = b""
    while select.select([sock], [], [], seconds)[0]:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def capture(version_flag, workdir):
    """(ClientHello, the server's first flight) for one protocol version."""
    server_port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-quiet", "-accept", str(server_port), "-naccept", "1",
         "-cert", f"{workdir}/cert.pem", "-key", f"{workdir}/key.pem", version_flag],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    relay = socket.socket()
    relay.bind(("127.0.0.1", 0))
    relay.listen(1)
    client = subprocess.Popen(
        ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{relay.getsockname()[1]}",
         "-servername", "localhost", "-alpn", "http/1.1", version_flag],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn, _ = relay.accept()
        hello = read_for(conn, 1.0)
        for _ in range(50):  # s_server listens a moment after it starts
            try:
                upstream = socket.create_connection(("127.0.0.1", server_port))
                break
            except ConnectionRefusedError:
                time.sleep(0.1)
        upstream.sendall(hello)
        flight = read_for(upstream, 1.0)
        return hello, flight
    finally:
        for p in (client, server):
            p.kill()
            p.wait()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus", "tls_unwrap_fuzz")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", f"{workdir}/key.pem", "-out", f"{workdir}/cert.pem",
             "-days", "1", "-subj", "/CN=localhost"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, flag in (("tls13", "-tls1_3"), ("tls12", "-tls1_2")):
            hello, flight = capture(flag, workdir)
            assert hello[:1] == b"\x16" and flight[:1] == b"\x16", (name, hello[:8], flight[:8])
            seeds = {
                f"client_hello_{name}": bytes([RAW_SERVER | CHUNK_WHOLE]) + hello,
                f"client_hello_{name}_bytewise": bytes([RAW_SERVER | CHUNK_ONE]) + hello,
                f"server_flight_{name}": bytes([RAW_CLIENT | CHUNK_WHOLE]) + flight,
            }
            for seed, data in seeds.items():
                with open(os.path.join(out, seed), "wb") as f:
                    f.write(data)
                print(f"{seed}: {len(data)} bytes")


if __name__ == "__main__":
    main()
