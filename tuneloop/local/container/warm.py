"""A warm instance: what the local SageMaker keeps of a training "instance" between jobs
(SageMaker Managed Warm Pools, ``ResourceConfig.KeepAlivePeriodInSeconds``).

On AWS a warm pool keeps the provisioned machines and the pulled image, so the next
matching job skips provisioning. Locally a job's start-up is the interpreter's: importing
torch and transformers, the toolkit and pip takes most of a short job. A warm instance is
a process that has imported them once and forks a fresh process for each Python program a
job runs (the toolkit's ``train``, its ``pip install -r requirements.txt``, the entry
point), as if that program had been started cold:

- the forked process gets the command line, environment, working directory and
  inheritable descriptors of the launcher that asked (``warm_launcher``), a session of
  its own, default signal handling, a reseeded ``random``, fresh standard streams;
- its ``sys.path`` is the one a cold interpreter would build (the script's folder first,
  then ``PYTHONPATH``), and a module the instance imported that the job's own folders
  shadow is dropped, so the job imports its own;
- it ends as a cold process does: non-daemon threads joined, ``atexit`` run, streams
  flushed, its exit status (or signal) reported to the launcher.

After each job the instance imports what that job imported (the base model's
architecture, tokenizers, pip's install command): a warm instance gets warmer, and a
second trial of the same base model starts with everything it needs in memory.

Run as ``python -m tuneloop.local.container.warm SOCKET LAUNCHER [--only] [module ...]``. It prints ``ready``
once it listens; it ends when its parent closes its standard input.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib
import io
import json
import os
import random
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from tuneloop.local.processes import group_alive

# What every instance imports before it says ready: the local training image's stack.
BASE_MODULES = ("torch", "transformers", "sagemaker_training.cli.train", "pip._internal.cli.main")
REQUEST_TIMEOUT_S = 10
# How often a job whose first process ended looks for what is left of it.
LINGER_POLL_S = 0.05
# Modules that read a job's environment when they are imported (the toolkit's paths come
# from SAGEMAKER_BASE_DIR): a forked process imports them afresh. Their dependencies stay.
PER_JOB_MODULES = ("sagemaker_training",)


def learnable(name: str, module: Any, roots: tuple[str, ...]) -> bool:
    """A module a later job may import too: installed (under one of the interpreter's own
    library folders), not a job's own code, not ``__main__``."""
    if name == "__main__" or name.startswith("__mp_"):
        return False
    path = getattr(module, "__file__", None)
    return isinstance(path, str) and path.startswith(roots)


class Instance:
    """The fork server: one thread, one select loop."""

    def __init__(self, socket_path: str, launcher: str, preload: list[str]) -> None:
        self.socket_path = socket_path
        self.launcher = launcher
        self.folder = Path(socket_path).parent
        # The interpreter's own library folders (sys.path[0] is this instance's folder).
        self.base_path = list(sys.path[1:])
        self.roots = tuple(os.path.join(p, "") for p in self.base_path if p and os.path.isdir(p))
        # Each forked process's launcher connection, its job (the pid of the job's first
        # process), each job's live processes, and exit statuses not yet reported.
        self.conns: dict[int, socket.socket] = {}
        self.tree: dict[int, int] = {}
        self.members: dict[int, set[int]] = {}
        self.outcome: dict[int, dict[str, int]] = {}
        # Each job's process groups (one per forked process), which job a group is, and
        # jobs whose first process ended while something of the job still runs.
        self.groups: dict[int, set[int]] = {}
        self.group_root: dict[int, int] = {}
        self.lingering: set[int] = set()
        self.python = sys.executable  # the real interpreter (a forked process's is the launcher)
        # Forking is only safe from a process with one Python thread; an import that leaves
        # one running ends this instance's forking (requests then run cold). Native pools
        # (OpenBLAS's) shut themselves down around a fork.
        self.forkable = True
        for name in preload:
            self.load(name)

    def load(self, name: str) -> None:
        if name in sys.modules:
            return
        try:
            importlib.import_module(name)
        except BaseException as exc:  # a module that fails here fails for the job too, in its own process
            print(f"warm instance: not preloaded {name}: {type(exc).__name__}: {exc}", flush=True)
        threads = threading.active_count()
        if threads > 1 and self.forkable:
            print(f"warm instance: {threads} threads after importing {name}; it forks no more", flush=True)
            self.forkable = False

    def serve(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(64)
        self.listener = listener
        wake_r, wake_w = os.pipe()
        self.wake = (wake_r, wake_w)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print("ready", flush=True)
        while True:
            timeout = LINGER_POLL_S if self.lingering else None
            ready, _, _ = select.select([listener, wake_r, sys.stdin, *self.conns.values()], [], [], timeout)
            if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
                break  # the local SageMaker let go of this instance
            if wake_r in ready:
                os.read(wake_r, 4096)
            self.reap()
            for root in list(self.lingering):
                self.settle(root)
            for pid, conn in list(self.conns.items()):
                if conn in ready:
                    self.launcher_gone(pid, conn)
            if listener in ready:
                conn, _ = listener.accept()
                self.start(conn)
        for pid in list(self.tree):
            _kill_group(pid, signal.SIGKILL)

    def start(self, conn: socket.socket) -> None:
        if not self.forkable:
            conn.close()  # the launcher runs its command cold
            return
        conn.settimeout(REQUEST_TIMEOUT_S)
        try:
            request, fds = _receive(conn)
            requester, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except (OSError, ValueError) as exc:
            print(f"warm instance: a request was refused: {exc}", flush=True)
            conn.close()
            return
        root = self.group_root.get(_group(requester) or 0)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            # The instance's own descriptors are not the job's: let go of them (detached,
            # so no socket object closes a number the job's descriptors reuse later).
            closing = [*self.wake, *(s.detach() for s in (self.listener, conn, *self.conns.values()))]
            try:
                code = self.child(request, fds, closing)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        for fd in fds:
            os.close(fd)
        conn.settimeout(None)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        root = root or pid
        self.conns[pid] = conn
        self.tree[pid] = root
        self.group_root[pid] = root  # the forked process leads a process group of its own
        self.members.setdefault(root, set()).add(pid)
        self.groups.setdefault(root, set()).add(pid)

    def reap(self) -> None:
        """Report each ended process to its launcher. A job's first process (the one its
        own launcher asked for) is reported once every process of its job has ended: a
        cold job's process group empties only then, and the local SageMaker waits for it
        before it uploads checkpoints."""
        while self.tree:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            root = self.tree.pop(pid, None)
            if root is None:
                continue
            if os.WIFSIGNALED(status):
                self.outcome[pid] = {"signal": os.WTERMSIG(status)}
            else:
                self.outcome[pid] = {"exit": os.waitstatus_to_exitcode(status)}
            self.members[root].discard(pid)
            if pid != root:
                self.report(pid)
            self.settle(root)
            self.learn(pid)

    def settle(self, root: int) -> None:
        """Report a job's first process once nothing of the job is left: no process forked
        for it, and no process in any of their groups (a launcher on its way here)."""
        if self.members.get(root) or root not in self.outcome:
            return
        if any(group_alive(group) for group in self.groups.get(root, ())):
            self.lingering.add(root)
            return
        self.lingering.discard(root)
        self.members.pop(root, None)
        for group in self.groups.pop(root, set()):
            self.group_root.pop(group, None)
        self.report(root)

    def report(self, pid: int) -> None:
        conn = self.conns.pop(pid, None)
        message = self.outcome.pop(pid, {"exit": 1})
        if conn is None:
            return
        try:
            conn.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass
        conn.close()

    def launcher_gone(self, pid: int, conn: socket.socket) -> None:
        """A launcher only closes its end when it was killed: its process goes too, and
        a job's first launcher takes the whole job along."""
        try:
            if conn.recv(1, socket.MSG_PEEK):
                return
        except OSError:
            pass
        doomed = self.groups.get(pid) or ({pid} if pid in self.tree else set())
        for group in list(doomed):
            _kill_group(group, signal.SIGKILL)
        del self.conns[pid]
        conn.close()

    def learn(self, pid: int) -> None:
        path = self.folder / f"modules-{pid}.json"
        try:
            names = json.loads(path.read_text())
            path.unlink()
        except (OSError, ValueError):
            return
        for name in names if isinstance(names, list) else []:
            if isinstance(name, str):
                self.load(name)

    # -- in the forked process -------------------------------------------------------

    def child(self, request: dict[str, Any], received: list[int], closing: list[int]) -> int:
        os.setsid()
        for fd in set(closing):
            try:
                os.close(fd)
            except OSError:
                pass
        targets = [int(fd) for fd in request["fds"]]
        for fd in {0, 1, 2} - set(targets):
            os.close(fd)  # closed in the launcher: closed here
        _install_fds(received, targets)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        _reset_stdio()
        random.seed()
        argv = [a for a in request["argv"]]
        while argv and argv[0] in ("-u", "-B"):
            argv.pop(0)
        if argv[0] == "-m":
            kind, target, args, first = "module", argv[1], argv[2:], os.getcwd()
        else:
            script = argv[1] if argv[0] == "--" else argv[0]
            rest = argv[2:] if argv[0] == "--" else argv[1:]
            kind, target, args, first = "script", script, rest, os.path.dirname(os.path.abspath(script))
        sys.path[:] = [first, *self.cold_path()[1:]]
        # Only folders the instance did not import from can hide what it imported.
        known = {os.path.abspath(p) for p in self.base_path if p}
        _drop_shadowed([f or os.getcwd() for f in sys.path if (os.path.abspath(f) if f else os.getcwd()) not in known])
        _drop(set(PER_JOB_MODULES))
        importlib.invalidate_caches()
        sys.executable = self.launcher
        _apply_thread_env()
        code = _run(kind, target, args)
        self._report_modules()
        return code

    def cold_path(self) -> list[str]:
        """sys.path as a cold interpreter builds it here (PYTHONPATH, ``site``, ``.pth``
        files): asked of one, a bare start of a few milliseconds."""
        try:
            out = subprocess.run(
                [self.python, "-c", "import json, sys; print(json.dumps(sys.path))"],
                capture_output=True,
                check=True,
                timeout=30,
            ).stdout
            path = json.loads(out)
            if isinstance(path, list) and all(isinstance(p, str) for p in path):
                return path
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        return ["", *self.base_path]

    def _report_modules(self) -> None:
        names = sorted(n for n, m in list(sys.modules.items()) if learnable(n, m, self.roots))
        try:
            (self.folder / f"modules-{os.getpid()}.json").write_text(json.dumps(names))
        except OSError:
            pass


def _group(pid: int) -> int | None:
    """A process's group: a launcher's tells which job it is part of."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 65536, 256)
    if len(data) < 4:
        raise ValueError("a request without its length")
    (size,) = struct.unpack("!I", data[:4])
    body = bytearray(data[4:])
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("a request cut short")
        body += chunk
    request = json.loads(bytes(body))
    if not isinstance(request, dict) or not isinstance(request.get("argv"), list) or not request["argv"]:
        raise ValueError("a request without a command line")
    if len(request.get("fds", [])) != len(fds):
        raise ValueError("a request whose descriptors did not all arrive")
    return request, list(fds)


def _install_fds(received: list[int], targets: list[int]) -> None:
    """Put each received descriptor at the number it had in the launcher."""
    floor = max([1024, *targets]) + 1
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in received]
    for fd in received:
        os.close(fd)
    for fd, target in zip(parked, targets, strict=True):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)


def _reset_stdio() -> None:
    """Standard streams as a new interpreter opens them over descriptors 0, 1 and 2."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    streams: list[io.TextIOWrapper | None] = []
    for fd in (0, 1, 2):
        try:
            raw = io.FileIO(fd, "rb" if fd == 0 else "wb", closefd=False)
        except OSError:
            streams.append(None)
            continue
        tty = raw.isatty()
        if fd == 0:
            streams.append(io.TextIOWrapper(io.BufferedReader(raw), line_buffering=tty))
            continue
        errors = "backslashreplace" if fd == 2 else "strict"
        writer = io.BufferedWriter(raw)
        streams.append(
            io.TextIOWrapper(writer, errors=errors, line_buffering=tty or fd == 2, write_through=unbuffered or fd == 2)
        )
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams  # type: ignore[misc]


def _drop_shadowed(folders: list[str]) -> None:
    """A module the instance imported that a job's folder provides is the job's to import."""
    names = set()
    for folder in folders:
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if entry.endswith(".py") and entry[:-3].isidentifier():
                names.add(entry[:-3])
            elif entry.isidentifier() and os.path.isfile(os.path.join(folder, entry, "__init__.py")):
                names.add(entry)  # a folder without __init__.py shadows nothing an import finds later
    _drop(names)


def _drop(names: set[str]) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in names:
            del sys.modules[name]


def _apply_thread_env() -> None:
    """torch reads OMP_NUM_THREADS when it is imported; here it was imported before the
    job's environment existed, so do what its import would have done."""
    torch = sys.modules.get("torch")
    value = os.environ.get("OMP_NUM_THREADS", "")
    if torch is not None and value.isdigit() and int(value) > 0:
        torch.set_num_threads(int(value))


def _run(kind: str, target: str, args: list[str]) -> int:
    try:
        if kind == "module":
            sys.argv = [target, *args]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [target, *args]
            runpy.run_path(target, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except Exception:
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _kill_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def write_launcher(folder: Path, socket_path: str) -> Path:
    """The instance's ``python``: a shell line that runs the launcher with the real
    interpreter (isolated, no site: it needs nothing but the standard library)."""
    source = (Path(__file__).with_name("warm_launcher.py")).read_text()
    source = source.replace('SOCKET = ""', f"SOCKET = {socket_path!r}", 1)
    source = source.replace("PYTHON = sys.executable", f"PYTHON = {sys.executable!r}", 1)
    launcher = folder / "launcher.py"
    launcher.write_text(source)
    python = folder / "python"
    python.write_text(f"#!/bin/sh\nexec '{sys.executable}' -I -S '{launcher}' \"$@\"\n")
    python.chmod(0o700)
    return python


def main(argv: list[str]) -> None:
    """``SOCKET LAUNCHER [module ...]``: the base modules and these; ``--only`` first: just these."""
    socket_path, launcher, *modules = argv
    preload = modules[1:] if modules[:1] == ["--only"] else [*BASE_MODULES, *modules]
    Instance(socket_path, launcher, preload).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
