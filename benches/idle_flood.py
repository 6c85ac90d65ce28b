#!/usr/bin/env python3
"""benches/idle_flood.py PID PORT [connections=8500] [percent-with-a-request=50]

The same idle-connection flood against any HTTP/1.1 listener on 127.0.0.1:PORT, so that credgate and a peer
(HAProxy's :18083 in ../shared/peers) are measured by one harness: opens the connections one after another, sends one
`GET /` on the given share of them and reads its answer, holds them all for 3 s (credgate parks a quiet connection
within 250 ms), closes them, sends 400 ordinary requests over 8 s, and prints process PID's resident memory before,
held and after, with the held memory per connection. Sequential, so slower than benches/idle_connections.rs's
flood, which opens 500 at a time; the two figures are not comparable with each other. HAProxy keeps its pools, so
restart it before each run (`run-peers.sh restart haproxy`). Raise the open-files limit
first (`ulimit -n`); HAProxy's peer config caps it at maxconn 9000.
"""
import os
import socket
import sys
import time


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise SystemExit(f"no process {pid}")


def request(port, close):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: flood\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("the listener closed a connection before answering")
        got += chunk
    if not got.startswith(b"HTTP/1.1 2"):
        raise SystemExit(f"not a 2xx answer: {got[:40]!r}")
    return s


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 8500
    pct = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    before = rss_mib(pid)
    held = []
    for i in range(n):
        if i % 100 < pct:
            held.append(request(port, close=False))
        else:
            held.append(socket.create_connection(("127.0.0.1", port)))
    time.sleep(3)
    during = rss_mib(pid)
    for s in held:
        s.close()
    for _ in range(8):
        time.sleep(1)
        for _ in range(50):
            request(port, close=True).close()
    after = rss_mib(pid)
    per = (during - before) * 1024 / n
    print(f"idle_flood port={port} connections={n} with_a_request={pct}% rss_before={before:.1f}MiB "
          f"rss_held={during:.1f}MiB rss_after_close={after:.1f}MiB per_connection={per:.2f}KiB")


if __name__ == "__main__":
    main()
