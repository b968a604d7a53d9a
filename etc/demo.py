"""`make demo`: run sqsd on its embedded local SQS endpoint and send example messages.

Starts `sqsd run --local -c sqsd.toml` from this directory, waits until its control
socket answers, sends a few messages through the producer API, prints what to try next,
then leaves the daemon running in the foreground until Ctrl-C (which stops it gracefully).

`demo.py send TEXT [--loud]` sends one more greeting to the running demo, as a producer
(another process that reads the same configuration) would.
"""

from __future__ import annotations

import os
import shlex
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
    print("demo: sent 7 example messages", file=sys.stderr)


def next_steps(cwd: str) -> str:
    """The commands to try next, runnable as printed from ``cwd`` (where `make demo` ran)."""
    bin_dir = os.path.dirname(sys.executable)  # the venv's bin/ (sys.executable unresolved)

    def path(name: str) -> str:
        return shlex.quote(os.path.relpath(name, cwd))

    sqsctl = f"{path(os.path.join(bin_dir, 'sqsctl'))} --socket {shlex.quote(SOCKET)}"
    send = f"{path(sys.executable)} {path(os.path.join(HERE, 'demo.py'))} send"
    commands = [
        (f"{sqsctl} status", "workers and queue depths"),
        (f"{send} 'hello again'", "one more message"),
        (f"{sqsctl} wait --timeout 60", "until the queues drain"),
    ]
    width = max(len(command) for command, _ in commands)
    return "\n".join(
        [f"demo: sqsd runs here until Ctrl-C. In another terminal, in {cwd}, try:"]
        + [f"  {command.ljust(width)}  # {what}" for command, what in commands]
    )


def send_one(text: str, loud: bool) -> int:
    """`demo.py send TEXT`: a producer in its own process, configured by SQSD_CONFIG."""
    os.environ.setdefault("SQSD_CONFIG", CONFIG)
    os.environ.setdefault("SQSD_SOCKET", SOCKET)
    import receivers

    receivers.greet(text, suffix="loud" if loud else None)
    print(f"sent {text!r} to greetings{':loud' if loud else ''}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    cwd = os.getcwd()
    os.chdir(HERE)
    sys.path.insert(0, HERE)
    if argv[:1] == ["send"]:
        if len(argv) not in (2, 3) or argv[2:] not in ([], ["--loud"]):
            raise SystemExit("usage: demo.py send TEXT [--loud]")
        return send_one(argv[1], loud="--loud" in argv)
    os.environ["SQSD_CONFIG"] = CONFIG
    os.environ["SQSD_SOCKET"] = SOCKET
    config = os.path.relpath(CONFIG, cwd)
    print(f"demo: starting sqsd on an embedded SQS endpoint (moto) with {config}", file=sys.stderr)
    daemon = subprocess.Popen([sys.executable, "-m", "sqsd", "run", "--local", "-c", CONFIG])
    try:
        wait_until_ready(daemon)
        send_examples()
        print(next_steps(cwd), file=sys.stderr, flush=True)
        return daemon.wait()
    except KeyboardInterrupt:
        return daemon.wait()  # the terminal sent SIGINT to sqsd too: it stops gracefully
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
