"""The ``python`` of a warm instance: what a training job's processes run instead of a cold
interpreter (standard library only: it starts in milliseconds, with ``-I -S``).

It asks the instance (``tuneloop.local.container.warm``) to fork a process that runs this command
line as a new interpreter would: the same arguments, environment, working directory and
inheritable file descriptors. Then it stands in for that process in the job's process
group: it forwards the signals it gets (a stop's SIGTERM) to the forked process's group,
and exits as the forked process exited. A command line it does not understand, or an
instance that is gone, runs cold: ``exec`` of the real interpreter, as before.

``SOCKET`` and ``PYTHON`` are set by the instance when it writes this file into its folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

SOCKET = ""
PYTHON = sys.executable
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# Interpreter flags that change nothing a forked interpreter would do differently here.
HARMLESS_FLAGS = frozenset({"-u", "-B"})
MAX_FDS = 250


def warm_form(argv: list[str]) -> bool:
    """True for ``[flags] [--] script args`` and ``-m module args``. ``-c code`` runs cold:
    the instance runs programs and modules from files, never code handed to it as text."""
    i = 0
    while i < len(argv) and argv[i] in HARMLESS_FLAGS:
        i += 1
    if i >= len(argv) or argv[i] == "-c":
        return False
    if argv[i] == "-m":
        return i + 1 < len(argv)
    if argv[i] == "--":
        i += 1
    return i < len(argv) and not argv[i].startswith("-")


def inheritable_fds() -> list[int]:
    """The descriptors an ``exec`` would keep: open and without close-on-exec."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if os.get_inheritable(fd):
                out.append(fd)
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return sorted(out)


def cold(argv: list[str], why: str = "") -> None:
    if why:
        print(f"tuneloop warm instance: {why}; running cold", file=sys.stderr, flush=True)
    os.execv(PYTHON, [PYTHON, *argv])


def main() -> None:
    argv = sys.argv[1:]
    if not warm_form(argv):
        cold(argv)
    fds = inheritable_fds()
    if len(fds) > MAX_FDS:
        cold(argv, f"{len(fds)} open descriptors are more than one request carries")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(SOCKET)
    except OSError as exc:
        cold(argv, f"the instance does not answer ({exc})")
    request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "fds": fds}).encode()
    pid = 0
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if pid:
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:
                pass
        else:
            pending.append(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    message = struct.pack("!I", len(request)) + request
    sent = socket.send_fds(conn, [message], fds)
    conn.sendall(message[sent:])  # a stream socket may take a long message in parts
    reader = conn.makefile("r")
    for line in reader:
        message = json.loads(line)
        if "pid" in message:
            pid = int(message["pid"])
            for waiting in pending:
                forward(waiting, None)
        elif "signal" in message:
            died_of = int(message["signal"])
            signal.signal(died_of, signal.SIG_DFL)
            os.kill(os.getpid(), died_of)
        elif "exit" in message:
            sys.exit(int(message["exit"]))
    if not pid:
        cold(argv, "the instance refused the request")
    # The instance went away while the process ran: the process went with it.
    print("tuneloop warm instance: the instance ended while this process ran", file=sys.stderr, flush=True)
    sys.exit(137)


if __name__ == "__main__":
    main()
