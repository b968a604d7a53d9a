"""`make demo`: run sqsd on its embedded local SQS endpoint and send example messages.

Starts `sqsd run --local` with sqsd.toml from this directory (its control socket moved
into a private directory of yours: see ``private_directory``), waits until the socket
answers, sends a few messages through the producer API, prints what to try next, then
leaves the daemon running in the foreground until Ctrl-C (which stops it gracefully).

`demo.py send TEXT [--loud]` sends one more greeting to the running demo, as a producer
(another process that reads the same configuration) would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import sqsd_client

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE_CONFIG = os.path.join(HERE, "sqsd.toml")


def private_directory() -> str:
    """Where the demo's socket and configuration go: ``sqsd-demo`` in your runtime
    directory ($XDG_RUNTIME_DIR, yours alone), else ``sqsd-demo-UID`` in the temporary
    directory, made 0700 and checked to be yours alone (as tmux does). Never a shared name
    another local user could take first. The same path each time, so that `demo.py send`
    finds the running demo."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == os.getuid():
        directory = os.path.join(runtime, "sqsd-demo")
    else:
        directory = os.path.join(tempfile.gettempdir(), f"sqsd-demo-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    st = os.lstat(directory)
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid()
            or stat.S_IMODE(st.st_mode) & 0o077):
        raise SystemExit(f"demo: {directory} is not a directory of yours alone (mode 0700); "
                         "remove it or set XDG_RUNTIME_DIR")
    return directory


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
    print("demo: sent 7 example messages", file=sys.stderr)


def next_steps(cwd: str, socket_path: str) -> str:
    """The commands to try next, runnable as printed from ``cwd`` (where `make demo` ran)."""
    bin_dir = os.path.dirname(sys.executable)  # the venv's bin/ (sys.executable unresolved)

    def path(name: str) -> str:
        return shlex.quote(os.path.relpath(name, cwd))

    sqsctl = f"{path(os.path.join(bin_dir, 'sqsctl'))} --socket {shlex.quote(socket_path)}"
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
    """`demo.py send TEXT`: a producer in its own process, configured by SQSD_CONFIG (the
    running demo's configuration, in its private directory)."""
    directory = private_directory()
    config = os.path.join(directory, "sqsd.toml")
    if not os.path.exists(config):
        raise SystemExit(f"demo: no demo runs ({config} is missing): start it with make demo")
    os.environ.setdefault("SQSD_CONFIG", config)
    os.environ.setdefault("SQSD_SOCKET", os.path.join(directory, "sqsd.sock"))
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
    directory = private_directory()
    config, socket_path = write_config(directory)
    os.environ["SQSD_CONFIG"] = config
    os.environ["SQSD_SOCKET"] = socket_path
    example = os.path.relpath(EXAMPLE_CONFIG, cwd)
    print(f"demo: starting sqsd on an embedded SQS endpoint (moto) with {example}, its "
          f"control socket in your private directory {directory}", file=sys.stderr)
    daemon = subprocess.Popen([sys.executable, "-m", "sqsd", "run", "--local", "-c", config])
    ours = False  # a second demo leaves the first one's directory alone
    try:
        wait_until_ready(daemon, socket_path)
        ours = True
        send_examples()
        print(next_steps(cwd, socket_path), file=sys.stderr, flush=True)
        return daemon.wait()
    except KeyboardInterrupt:
        return daemon.wait()  # the terminal sent SIGINT to sqsd too: it stops gracefully
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait()
        if ours:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
