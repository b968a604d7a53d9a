"""An unprivileged user's wait flood, then figures as JSON. Standard library only: it runs
as another user (uid 65534) from a copy that user can read.

    python wait_flood.py SOCKET SECONDS CONNECTIONS HOLD

Holds HOLD connections with a `wait` open for the whole flood; meanwhile, round after
round, opens CONNECTIONS connections at once, sends `{"cmd": "wait"}` on each and hangs
up, the lock-out of issue #11. Counts what the daemon accepted and what it refused.
"""

import contextlib
import json
import selectors
import socket
import sys
import time

WAIT = b'{"cmd": "wait"}\n'


def open_waits(path: str, count: int) -> list[socket.socket]:
    conns = []
    for _ in range(count):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
            conn.sendall(WAIT)
        except OSError:
            conn.close()
            continue
        conns.append(conn)
    return conns


def refusals(conns: list[socket.socket], quiet: float) -> int:
    """Read what arrives until ``quiet`` seconds pass without a reply: the refusals."""
    refused = 0
    with selectors.DefaultSelector() as selector:
        for conn in conns:
            selector.register(conn, selectors.EVENT_READ)
        last = time.monotonic()
        while selector.get_map() and time.monotonic() - last < quiet:
            for key, _ in selector.select(0.02):
                with contextlib.suppress(OSError):
                    refused += b"too many connections" in key.fileobj.recv(4096)
                selector.unregister(key.fileobj)
                last = time.monotonic()
    return refused


def main() -> None:
    path, seconds, count, hold = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(
        sys.argv[4])
    held = open_waits(path, hold)
    figures = {"held": len(held) - refusals(held, 0.2), "rounds": 0, "waits_sent": 0,
               "refused": 0, "connect_failed": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conns = open_waits(path, count)
        figures["connect_failed"] += count - len(conns)
        figures["waits_sent"] += len(conns)
        figures["refused"] += refusals(conns, 0.05)
        for conn in conns:
            conn.close()  # hang up with the waits in progress
        figures["rounds"] += 1
    for conn in held:
        conn.close()
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
