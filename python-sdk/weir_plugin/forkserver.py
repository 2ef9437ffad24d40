"""The fork server the plugin host starts once: `python -m weir_plugin.forkserver`.

It imports the worker runtime (and the modules the operator names in
`WEIR_WORKER_PRELOAD`, e.g. numpy), then forks a worker process for each request, so
workers start in milliseconds and share those pages copy-on-write. Each worker is what
`python -m weir_plugin.worker` would be: its own process group, killed when this process
dies (which dies with the host), its own address-space limit, stdout and stderr on the
pipes the host gave, the channel on the socket the host gave.

The control channel is a SOCK_SEQPACKET socket (`WEIR_FORK_FD`), one JSON message a packet:

host → fork server                          fork server → host
  {"spawn": id, "memory_limit": bytes|null}   {"ready": true, "preloaded": [...],
    with three descriptors (SCM_RIGHTS):          "failed": {"module": "error"}}
    the worker's channel, its stdout, its       {"spawned": id, "pid": n} or
    stderr                                        {"spawned": id, "error": "..."}
  {"retire": true}: fork no more; exit once     {"exited": pid, "status": "exit status: 1"}
    the last worker has exited

The host closing the channel ends the fork server (its workers then get SIGKILL). The
process is confined (Landlock) and its environment set by the host before it starts, so
every worker inherits both.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import resource
import selectors
import signal
import socket
import sys
import traceback
from typing import Any

_PR_SET_PDEATHSIG = 1
_MAX_PACKET = 64 * 1024


def describe(status: int) -> str:
    """A wait status as Rust's `ExitStatus` prints it."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = f" ({signal.Signals(sig).name})"
        except ValueError:
            name = ""
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return f"signal: {sig}{name}{core}"
    return f"exit status: {os.WEXITSTATUS(status)}"


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        # The fork server died between fork and prctl.
        os._exit(1)


def _become_worker(fds: list[int], memory_limit: int | None, parent: int) -> None:
    """In the forked child: become a worker and never return."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setpgid(0, 0)
        _die_with_parent(parent)
        channel, out, err = fds
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        os.environ["WEIR_IPC_FD"] = str(channel)
        # Plugin files and packages may have appeared since the fork server started.
        importlib.invalidate_caches()
        from . import worker

        worker.main()  # exits the process
    except BaseException:  # report anything, then exit
        try:
            os.write(2, traceback.format_exc().encode())
        except OSError:
            pass
    os._exit(code)


def _send(ctl: socket.socket, message: dict[str, Any]) -> None:
    ctl.send(json.dumps(message).encode())


def _prewarm() -> None:
    """Do once here what every worker would do for itself, so it is shared."""
    from . import native, worker  # noqa: F401 - imported to be shared with every worker
    from .engine import install_builtins

    install_builtins()
    native.load()


def serve(ctl: socket.socket, preload: list[str]) -> int:
    _prewarm()
    loaded: list[str] = []
    failed: dict[str, str] = {}
    for name in preload:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except BaseException as e:  # a bad module name must not stop the host
            failed[name] = f"{type(e).__name__}: {e}"
    # Objects that exist now are never collected by the workers' GC, so its passes do not
    # write to (and copy) the pages they share with this process.
    gc.collect()
    gc.freeze()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    me = os.getpid()
    children: set[int] = set()
    retiring = False
    _send(ctl, {"ready": True, "preloaded": loaded, "failed": failed})

    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is ctl:
                try:
                    data, fds, _, _ = socket.recv_fds(ctl, _MAX_PACKET, 3)
                except InterruptedError:
                    continue
                if not data:
                    return 0  # the host is gone
                request = json.loads(data)
                if request.get("retire"):
                    retiring = True
                    if not children:
                        return 0
                    continue
                if len(fds) != 3:
                    for fd in fds:
                        os.close(fd)
                    _send(ctl, {"spawned": request.get("spawn"), "error": f"expected 3 descriptors, got {len(fds)}"})
                    continue
                try:
                    pid = os.fork()
                except OSError as e:
                    for fd in fds:
                        os.close(fd)
                    _send(ctl, {"spawned": request["spawn"], "error": f"fork failed: {e}"})
                    continue
                if pid == 0:
                    sel.close()
                    ctl.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    _become_worker(fds, request.get("memory_limit"), me)
                # The child does this too; doing it here as well means the group exists
                # before the host hears of the pid (and may kill the group).
                try:
                    os.setpgid(pid, pid)
                except OSError:
                    pass
                for fd in fds:
                    os.close(fd)
                children.add(pid)
                _send(ctl, {"spawned": request["spawn"], "pid": pid})
            else:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    children.discard(pid)
                    _send(ctl, {"exited": pid, "status": describe(status)})
                if retiring and not children:
                    return 0


def main() -> None:
    ctl = socket.socket(fileno=int(os.environ.pop("WEIR_FORK_FD")))
    preload = [m.strip() for m in os.environ.pop("WEIR_WORKER_PRELOAD", "").split(",") if m.strip()]
    try:
        code = serve(ctl, preload)
    except (BrokenPipeError, ConnectionResetError):
        code = 0
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
