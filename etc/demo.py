"""`make demo`: run sqsd on its embedded local SQS endpoint and send example messages.

Starts `sqsd run --local` with sqsd.toml from this directory (its control socket moved
into a private directory: $XDG_RUNTIME_DIR or a new 0700 one), waits until the socket
answers, sends a few messages through the producer API, then leaves the daemon
running in the foreground until Ctrl-C (which stops it gracefully).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import sqsd_client

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE_CONFIG = os.path.join(HERE, "sqsd.toml")


def private_directory() -> str:
    """Where the demo's socket goes: your runtime directory ($XDG_RUNTIME_DIR, yours alone),
    else a new 0700 directory. Never a shared name in /tmp, which another local user could
    take first."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == os.getuid():
        return tempfile.mkdtemp(prefix="sqsd-demo-", dir=runtime)
    return tempfile.mkdtemp(prefix="sqsd-demo-")  # mode 0700


def write_config(directory: str) -> tuple[str, str]:
    """The example configuration with its socket in ``directory``: (config, socket)."""
    socket_path = os.path.join(directory, "sqsd.sock")
    with open(EXAMPLE_CONFIG) as example:
        text = re.sub(r"(?m)^socket = .*$", f"socket = {json.dumps(socket_path)}", example.read())
    config = os.path.join(directory, "sqsd.toml")
    with open(config, "w") as out:
        out.write(text)
    return config, socket_path


def wait_until_ready(daemon: subprocess.Popen[bytes], socket_path: str,
                     timeout: float = 60.0) -> None:
    client = sqsd_client.Client(socket_path, timeout=1.0)
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
    directory = private_directory()
    config, socket_path = write_config(directory)
    os.environ["SQSD_CONFIG"] = config
    os.environ["SQSD_SOCKET"] = socket_path
    print(f"demo: control socket {socket_path} (sqsctl --socket {socket_path} status)",
          file=sys.stderr)
    daemon = subprocess.Popen([sys.executable, "-m", "sqsd", "run", "--local", "-c", config])
    try:
        wait_until_ready(daemon, socket_path)
        send_examples()
        return daemon.wait()
    except KeyboardInterrupt:
        return daemon.wait()  # the terminal sent SIGINT to sqsd too: it stops gracefully
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
