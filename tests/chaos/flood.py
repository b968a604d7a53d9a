"""Flood the control socket with wake-ups for SECONDS, then print figures as JSON.

    python tests/chaos/flood.py SOCKET QUEUE RATE SECONDS

Most wake-ups are pipelined on a few long connections (RATE per second in all, paced in
10 ms slices); some come, like producers' ``sqsd_client.wake()``, on a fresh connection
each. Every reply is read and counted.
"""

import json
import socket
import sys
import threading
import time

PIPES = 4
FRESH_SHARE = 0.05  # of RATE, on a new connection each


def read_replies(conn: socket.socket, counts: dict, lock: threading.Lock) -> None:
    buffer = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        ok = sum(1 for line in lines if b'"ok":true' in line)
        with lock:
            counts["ok"] += ok
            counts["error"] += len(lines) - ok


def fresh_wakes(path: str, request: bytes, rate: float, end: float, counts: dict,
                lock: threading.Lock) -> None:
    step = 1.0 / rate
    due = time.monotonic()
    while time.monotonic() < end:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(1.0)
                conn.connect(path)
                conn.sendall(request)
                ok = b'"ok":true' in conn.recv(4096)
        except OSError:
            ok = False
        with lock:
            counts["fresh_sent"] += 1
            counts["fresh_ok"] += ok
        due += step
        time.sleep(max(0.0, due - time.monotonic()))


def main() -> None:
    path, queue, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    request = (json.dumps({"cmd": "wake", "queue": queue}) + "\n").encode()
    counts = {"sent": 0, "ok": 0, "error": 0, "fresh_sent": 0, "fresh_ok": 0}
    lock = threading.Lock()
    pipes = []
    readers = []
    for _ in range(PIPES):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        pipes.append(conn)
        reader = threading.Thread(target=read_replies, args=(conn, counts, lock), daemon=True)
        reader.start()
        readers.append(reader)
    started = time.monotonic()
    end = started + seconds
    fresh = threading.Thread(target=fresh_wakes,
                             args=(path, request, rate * FRESH_SHARE, end, counts, lock))
    fresh.start()
    per_slice = rate * (1 - FRESH_SHARE) / 100  # 10 ms slices
    owed = 0.0
    n = 0
    due = started
    while time.monotonic() < end:
        owed += per_slice
        lines = int(owed)
        owed -= lines
        if lines:
            pipes[n % PIPES].sendall(request * lines)
            n += 1
            counts["sent"] += lines
        due += 0.01
        time.sleep(max(0.0, due - time.monotonic()))
    elapsed = time.monotonic() - started
    fresh.join()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if counts["ok"] + counts["error"] >= counts["sent"]:
                break
        time.sleep(0.05)
    for conn in pipes:
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()
    total = counts["sent"] + counts["fresh_sent"]
    print(json.dumps({**counts, "seconds": round(elapsed, 2),
                      "wakes_per_second": round(total / elapsed)}), flush=True)


if __name__ == "__main__":
    main()
