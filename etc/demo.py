"""`make demo`: run sqsd on its embedded local SQS endpoint and send example messages.

Starts `sqsd run --local -c sqsd.toml` from this directory, waits until its control
socket answers, sends a few messages through the producer API, then leaves the daemon
running in the foreground until Ctrl-C (which stops it gracefully).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import sqsd_client

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "sqsd.toml")
SOCKET = "/tmp/sqsd-demo.sock"


def wait_until_ready(daemon: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    client = sqsd_client.Client(SOCKET, timeout=1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            sys.exit(daemon.returncode)
        try:
            workers = client.status()["workers"]
            if workers and all(w["state"] in ("polling", "idle") for w in workers):
                return
        except (sqsd_client.DaemonUnavailable, sqsd_client.CommandFailed):
            pass
        time.sleep(0.2)
    raise SystemExit("sqsd did not become ready in time")


def send_examples() -> None:
    import receivers

    receivers.greet("hello from the demo")
    receivers.greet("and a loud one", suffix="loud")
    receivers.make_thumbnail.delay(42, width=256)
    receivers.make_thumbnail.delay(-1)  # fails: see the failed-message log and the DLQ
    for number in range(3):
        receivers.take_order(f"order {number}", group_id="customer-7")
    print("demo: sent 7 example messages; Ctrl-C stops sqsd", file=sys.stderr)


def main() -> int:
    os.chdir(HERE)
    sys.path.insert(0, HERE)
    os.environ["SQSD_CONFIG"] = CONFIG
    os.environ["SQSD_SOCKET"] = SOCKET
    daemon = subprocess.Popen([sys.executable, "-m", "sqsd", "run", "--local", "-c", CONFIG])
    try:
        wait_until_ready(daemon)
        send_examples()
        return daemon.wait()
    except KeyboardInterrupt:
        return daemon.wait()  # the terminal sent SIGINT to sqsd too: it stops gracefully
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait()


if __name__ == "__main__":
    sys.exit(main())
