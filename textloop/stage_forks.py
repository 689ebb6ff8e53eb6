"""Stage fork server: while `textloop run` makes stages up to date, one helper process imports
what the stage commands import once, and forks one child per stage command instead of a fresh
interpreter paying those imports again (the idea of multiprocessing's "forkserver" with
preload, for commands DVC starts: dvc.yaml and dvc.lock stay the same).

DVC's command process (`python -m textloop stage NAME`) becomes a thin client: it hands its
argv, cwd, environment and its stdin/stdout/stderr descriptors to the server over a Unix socket
(SOCKET_ENV), forwards SIGTERM/SIGINT to the child and ends as the child ended (its exit code,
or the same signal). No server (plain `dvc repro`, another OS, the setting off, the server still
importing): the command runs in its own process as always, without waiting.

The server is a child of the run's process (stopped and waited for when the stages end) and
waits for every child it forks, so the run's CPU accounting counts all of them. A child dies
with its client (EOF on the connection), with the server (PR_SET_PDEATHSIG), and the server
with the run's process.

Standard library only at import: the client runs before any heavy import."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

SOCKET_ENV = "TEXTLOOP_STAGE_FORKS_SOCKET"  # the server's socket, set in the run's environment
# What the stage commands import (measured with `python -X importtime`), preloaded by the
# server. Never torch / transformers / huggingface (they read the environment when imported)
# nor mlflow or matplotlib (read the environment / the working folder when imported).
PRELOAD = ("textloop.cli", "textloop.pipeline.stages", "textloop.pipeline.dag",
           "textloop.pipeline.executor", "textloop.pipeline.label_steps", "pyarrow.dataset",
           "pyarrow.parquet", "tasks.ingest", "tasks.ingest.ingest_plan", "tasks.feedback",
           "tasks.clean.clean_parts", "tasks.label", "datasketch.lsh", "tasks.shard.neardup",
           "tasks.shard.shard_parts", "tasks.train.fit", "tasks.train.explain_linear", "optuna",
           "tasks.optimize.tune", "tasks.evaluate.metrics", "tasks.evaluate.slices")
ENTRY = "textloop.cli"  # the module whose main() a stage command runs (`python -m textloop`)
FORWARDED = (signal.SIGTERM, signal.SIGINT)
_HEADER = struct.Struct("!I")
ABANDON_S = 2.0  # an abandoned fork's time to end by itself before it gets SIGTERM (see stop)
_PR_SET_PDEATHSIG = 1


def available() -> bool:
    """Forking a preloaded interpreter is possible here (Linux: fork, pidfd, PDEATHSIG)."""
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open")


# ---- client: the stage command's own process ------------------------------------------------

def hand_over(argv: list[str]) -> None:
    """Run this stage command as a fork of the server named by SOCKET_ENV and end as it ended;
    returns (doing nothing) when there is no ready server, so the caller runs it itself."""
    path = os.environ.get(SOCKET_ENV)
    if not path or not available():
        return
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(_address(path))
    except OSError:  # not started, still importing, or gone: the normal path, at once
        conn.close()
        return
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                          "path": sys.path}).encode("utf-8", "surrogateescape")
    reader = conn.makefile("rb")
    try:
        socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        pid_line = reader.readline()
    except OSError:  # the server stopped before taking it
        pid_line = b""
    if not pid_line:  # nothing was forked: nothing ran yet
        conn.close()
        return
    _mirror(int(pid_line), reader)


def _address(name: str) -> str:
    """The socket address of a server `name`: '@NAME' is NAME in Linux's abstract namespace
    (no file to leave behind when a run is killed)."""
    return "\0" + name[1:] if name.startswith("@") else name


def _mirror(pid: int, reader: Any) -> NoReturn:
    """Forward SIGTERM/SIGINT to the child `pid`, then end the way it ended."""
    for signum in FORWARDED:
        signal.signal(signum, lambda sig, _frame: _forward(pid, sig))
    line = reader.readline()
    for signum in FORWARDED:
        signal.signal(signum, signal.SIG_DFL)
    # no status: the server died, and the child with it (PDEATHSIG)
    status = int(line) if line else signal.SIGKILL
    code = os.waitstatus_to_exitcode(status)
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:
        with contextlib.suppress(OSError):  # SIGKILL's cannot be set (nor needs to be)
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)


def _forward(pid: int, signum: int) -> None:
    """A signal the client got goes to the child, which decides what it means."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


# ---- server ---------------------------------------------------------------------------------

def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent ends (Linux PR_SET_PDEATHSIG); if the parent is
    already gone, end now."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(1)


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    """Import what the stage commands import, once; a module that fails to import here is
    left to the child (which then reports its error as the normal path would)."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (the stage itself will raise it, in its own output)
            sys.modules.pop(name, None)


def serve(path: str, parent: int, modules: tuple[str, ...] = PRELOAD, entry: str = ENTRY) -> None:
    """The server's loop, single-threaded: preload, then listen on `path` (see _address); fork
    a child per request of this user's processes, wait for each (pidfd) and send its wait
    status back; stop when stdin closes (the run ended, or died) once every child has been
    waited for."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the run's and the child's
    preload(modules)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(_address(path))
    listener.listen(16)
    with contextlib.suppress(OSError):  # for whoever reads the server's stdout (tests)
        os.write(1, b"ready\n")
    children: dict[int, Child] = {}  # by pidfd
    stopping = False
    try:
        while not stopping or children:
            watched = [*children, *([] if stopping else [listener.fileno(), 0])]
            ready, _, _ = select.select(watched, [], [])
            for fd in ready:
                if fd == 0:
                    stopping = not os.read(0, 4096)
                elif fd == listener.fileno():
                    _accept(listener, children, entry)
                else:
                    _reap(fd, children)
    finally:
        listener.close()
        if not path.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _accept(listener: socket.socket, children: dict[int, Child], entry: str) -> None:
    """Read one request (its three descriptors and the JSON after them), fork its child, tell
    the client the child's pid."""
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
        if uid != os.getuid():  # runs code as this user: nobody else's requests
            raise ValueError(f"request from uid {uid}")
        conn.settimeout(10)
        head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        head += _recv_exactly(conn, _HEADER.size - len(head))
        request = json.loads(_recv_exactly(conn, _HEADER.unpack(head)[0])
                             .decode("utf-8", "surrogateescape"))
        conn.settimeout(None)
        if len(fds) != 3:
            raise ValueError("a request carries stdin, stdout and stderr")
    except (OSError, ValueError):
        conn.close()
        for fd in fds:
            os.close(fd)
        return
    keep = [listener.fileno(), 0, *children, *(c.conn.fileno() for c in children.values())]
    server = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            run_child(conn, fds, request, keep, server, entry)
        finally:  # whatever escapes it, a fork never goes back into the server's loop
            os._exit(1)
    for fd in fds:
        os.close(fd)
    children[os.pidfd_open(pid)] = Child(pid, conn, " ".join(request["argv"][1:]))
    with contextlib.suppress(OSError):
        conn.sendall(f"{pid}\n".encode())


class Child(NamedTuple):
    """A forked stage command: its pid, its client's connection, its argv after argv[0]."""

    pid: int
    conn: socket.socket
    command: str


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    """`size` bytes from a stream socket (EOF before them: ValueError)."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("request cut short")
        data += chunk
    return data


def _reap(pidfd: int, children: dict[int, Child]) -> None:
    """A child ended: wait for it (its CPU joins this process's children's), send its wait
    status to its client (gone already when the client was killed) and note it in the
    server's log (its stderr)."""
    child = children.pop(pidfd)
    os.close(pidfd)
    _, status = os.waitpid(child.pid, 0)
    with contextlib.suppress(OSError):
        child.conn.sendall(f"{status}\n".encode())
    child.conn.close()
    print(f"fork {child.pid} `{child.command}` exit {os.waitstatus_to_exitcode(status)}",
          file=sys.stderr, flush=True)


# ---- child: one stage command ---------------------------------------------------------------

def run_child(conn: socket.socket, fds: list[int], request: dict[str, Any],
              server_fds: list[int], server: int, entry: str = ENTRY) -> NoReturn:
    """In the forked child: become the client's process (descriptors, folder, environment,
    argv), run the stage command, then exit as an interpreter does: non-daemon threads and
    atexit handlers, streams flushed, and os._exit (never back into the server's loop)."""
    code, interrupted = 1, False
    try:
        die_with_parent(server)
        for fd in server_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        become(fds, request)
        _die_with_client(conn)
        code = _run_entry(entry)
    except BaseException as exc:  # noqa: BLE001 (reported as the interpreter would, then exit 1)
        import traceback

        traceback.print_exc()
        interrupted = isinstance(exc, KeyboardInterrupt)
    finally:
        try:
            code = _exit_like_interpreter(code)
        except KeyboardInterrupt:  # ^C while exiting (joining threads): it ends the command
            interrupted = True
        if interrupted:  # as Python ends on an uncaught ^C: by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def become(fds: list[int], request: dict[str, Any]) -> None:
    """Take the client's stdin/stdout/stderr, working folder, environment (os.environ replaced:
    the run's and DVC's variables reach the stage), argv and sys.path."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[:] = request["path"]
    if "numpy" in sys.modules:  # its global generator, seeded afresh as in a new process
        sys.modules["numpy"].random.seed()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.reconfigure(line_buffering=stream.isatty())


def _die_with_client(conn: socket.socket) -> None:
    """A daemon thread that SIGKILLs this child when its client's end of the connection closes
    (the client was killed; a live client never writes after its request)."""
    import threading

    def watch() -> None:
        with contextlib.suppress(OSError):
            while conn.recv(1):
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="client-watch", daemon=True).start()


def _run_entry(entry: str) -> int:
    """`entry`'s main() as `python -m textloop` runs it; its exit code (SystemExit's)."""
    import importlib

    try:
        importlib.import_module(entry).main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0


def _exit_like_interpreter(code: int) -> int:
    """What Python does at exit before the process ends: join non-daemon threads, run atexit
    handlers, flush stdout and stderr. Returns the exit code (1 when flushing failed)."""
    import atexit
    import threading

    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            code = code or 1
    return code


# ---- the run's side: start and stop -------------------------------------------------------------

class StageForkServer:
    """The server for one run: started on the first stage command that will run (`start`),
    stopped and waited for by `stop`; meanwhile SOCKET_ENV names it in this process's
    environment, which DVC passes to the stage commands."""

    def __init__(self, log_path: Path, entry: str = ENTRY, modules: tuple[str, ...] = PRELOAD
                 ) -> None:
        self.log_path, self.entry, self.modules = log_path, entry, modules
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = ""

    def start(self) -> None:
        """Start the server (once) with this interpreter; it listens once its preload ends, on
        an abstract socket named after this process (a killed run leaves no file behind)."""
        import secrets
        import subprocess

        if self.proc is not None:
            return
        self.path = f"@textloop-stage-forks-{os.getpid()}-{secrets.token_hex(8)}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__, self.path, str(os.getpid()), self.entry,
                 *self.modules], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        os.environ[SOCKET_ENV] = self.path

    def cpu_seconds(self) -> float:
        """CPU seconds of the live server and of the children it has waited for (Linux /proc);
        0 once it was waited for (then RUSAGE_CHILDREN holds them) or before it started."""
        if self.proc is None or self.proc.returncode is not None:
            return 0.0
        return tree_cpu_seconds(self.proc.pid)

    def stop(self, grace_s: float = 30.0, abandoned: bool = False) -> None:
        """Close the server's stdin (it ends after its last child) and wait for it. DVC waits
        for each command, so a fork still running here is one the run is abandoning. When the
        run ends by an exception (^C, SIGTERM, a failure: `abandoned`), a fork still running
        after ABANDON_S (time for a ^C's own unwinding) gets SIGTERM, as a stage process killed
        with its run would; after `grace_s` the server is killed, and its forks with it."""
        import subprocess

        os.environ.pop(SOCKET_ENV, None)
        if self.proc is None:
            return
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]
        try:
            if abandoned:
                try:
                    self.proc.wait(timeout=ABANDON_S)
                except subprocess.TimeoutExpired:
                    for pid in child_pids(self.proc.pid):
                        _forward(pid, signal.SIGTERM)
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def child_pids(pid: int) -> list[int]:
    """The pids of process `pid`'s children (psutil; [] when it is gone: the server's kill
    then ends them, by PR_SET_PDEATHSIG)."""
    import psutil  # only a run that is being abandoned needs it

    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and of the children it has waited for
    (/proc/PID/stat); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def fork_server(log_path: Path, enabled: bool) -> Iterator[StageForkServer | None]:
    """A StageForkServer (not started) while the block runs, always stopped at its end; None
    where it is off or impossible (the stage commands then run the normal way)."""
    if not (enabled and available()):
        yield None
        return
    server = StageForkServer(log_path)
    try:
        yield server
    except BaseException:
        server.stop(abandoned=True)
        raise
    server.stop()


def main() -> None:
    """`python -m textloop.stage_forks SOCKET PARENT_PID ENTRY [MODULE...]`: the server
    (StageForkServer starts it)."""
    serve(sys.argv[1], int(sys.argv[2]), tuple(sys.argv[4:]), sys.argv[3])


if __name__ == "__main__":
    main()
