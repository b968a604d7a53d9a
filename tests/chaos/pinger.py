"""Ping the control socket every INTERVAL seconds until SIGTERM, then print figures as JSON.

    python tests/chaos/pinger.py SOCKET INTERVAL

A separate process, so that what it measures is the daemon and not the test's own threads.
Each ping opens a new connection (as producers' wake-ups do) and times connect to reply.
"""

import json
import signal
import socket
import sys
import time

SLOW = 0.1  # seconds: the suite's bound on a ping


def ping(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(2.0)
        conn.connect(path)
        conn.sendall(b'{"cmd": "ping"}\n')
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                raise ConnectionError("closed without a reply")
            reply += chunk
    answer = json.loads(reply)
    if answer.get("ok") is not True:
        raise RuntimeError(f"ping refused: {answer}")


def main() -> None:
    path, interval = sys.argv[1], float(sys.argv[2])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    started = time.monotonic()
    latencies: list[float] = []
    failures: list[tuple[float, str]] = []
    slow: list[tuple[float, float]] = []  # over SLOW
    timeline: list[tuple[float, float]] = []
    while not stop:
        t0 = time.monotonic()
        try:
            ping(path)
        except Exception as exc:
            failures.append((round(t0 - started, 3), f"{type(exc).__name__}: {exc}"[:200]))
        else:
            latency = time.monotonic() - t0
            latencies.append(latency)
            timeline.append((round(t0 - started, 3), round(latency * 1000, 1)))
            if latency > SLOW:
                slow.append((round(t0 - started, 3), round(latency * 1000, 1)))
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    latencies.sort()

    def quantile(q: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

    print(json.dumps({
        "pings": len(latencies) + len(failures), "failures": len(failures),
        "first_failures": failures[:10], "p50_ms": quantile(0.5), "p99_ms": quantile(0.99),
        "max_ms": quantile(1.0), "slow": len(slow),
        "slowest": sorted(timeline, key=lambda s: -s[1])[:5],
        "seconds": round(time.monotonic() - started, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
