#!/usr/bin/env python3
"""Clients for bench/regions/run.sh, run inside a city's namespace (`aloft dev exec --from`).

  probe.py routable HOST MACHINE_ID GO_FILE OUT_FILE
      Waits for GO_FILE, then asks the anycast address (the city's edge) for MACHINE_ID
      (fly-force-instance-id) every millisecond until that machine answers; writes the wall
      clock time of the first answer to OUT_FILE.

  probe.py load HOST SECONDS OUT_FILE
      Asks the anycast address again and again for SECONDS, one request at a time with a 2 s
      timeout, and writes one line per request: start time, end time, region or "error".
"""

import socket
import sys
import time
import os

ANYCAST = "10.250.0.1"


def ask(host, extra="", timeout=2.0):
    """One GET /json; returns (status line, body) or raises."""
    s = socket.create_connection((ANYCAST, 80), timeout=timeout)
    try:
        s.settimeout(timeout)
        s.sendall(
            f"GET /json HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n".encode()
        )
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    text = data.decode(errors="replace")
    status = text.split("\r\n", 1)[0]
    body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
    return status, body


def routable(host, machine, go_file, out_file):
    while not os.path.exists(go_file):
        time.sleep(0.001)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            status, body = ask(host, f"fly-force-instance-id: {machine}\r\n", timeout=1.0)
            if status.startswith("HTTP/1.1 200") and machine in body:
                with open(out_file, "w") as f:
                    f.write(f"{time.time():.6f}\n")
                return
        except OSError:
            pass
        time.sleep(0.001)
    with open(out_file, "w") as f:
        f.write("never\n")


def load(host, seconds, out_file):
    end = time.time() + float(seconds)
    with open(out_file, "w") as f:
        while time.time() < end:
            t0 = time.time()
            try:
                status, body = ask(host)
                if status.startswith("HTTP/1.1 200"):
                    region = body.split('"region":"', 1)[1].split('"', 1)[0]
                else:
                    region = "error"
            except (OSError, IndexError):
                region = "error"
            f.write(f"{t0:.6f} {time.time():.6f} {region}\n")
            f.flush()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "routable":
        routable(*sys.argv[2:6])
    elif mode == "load":
        load(*sys.argv[2:5])
    else:
        sys.exit(f"unknown mode {mode!r}")
