"""One sweep per run root at a time: an advisory lock file that names its holder.

``<run_root>/.nmtune.lock`` is locked with ``fcntl.flock`` by the sweep that works there; its content says who holds
it (pid, host, start time, command line). The kernel releases the lock when the holder's process (and every process
that inherited it, such as the sweep's workers) is gone, so a lock left by a killed sweep is taken over without
asking. A second sweep is refused at once with the holder's name, or waits for it with ``wait=True``.

flock is local to one machine: run roots on network file systems shared by several hosts are not protected.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".nmtune.lock"


class RunRootBusy(RuntimeError):
    """Another process holds the run root's lock."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    if not info:
        return "another process (no holder recorded yet)"
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')} "
            f"({info.get('command', '?')})")


@contextlib.contextmanager
def run_root_lock(run_root: str | os.PathLike, *, wait: bool = False) -> Iterator[Path]:
    """Hold ``<run_root>/.nmtune.lock`` for the block; raise ``RunRootBusy`` naming the holder unless ``wait``."""
    root = Path(run_root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise RunRootBusy(f"run root {root} is in use by {_holder(path)}; wait for it to finish, pass --wait "
                                  "to queue behind it, or use another --run-root") from None
            print(f"waiting for the run root {root}, held by {_holder(path)} …", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    command=" ".join(sys.argv[:6]))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # the file stays (removing it would race with a waiting sweep); empty = free
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
