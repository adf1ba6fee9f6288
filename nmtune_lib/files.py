"""Crash-safe file writing: every result file appears whole or not at all (temp file in the same folder + rename)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block has written it, rename it onto ``path``.

    The rename is atomic on POSIX, so readers (and a rerun after a crash or ``kill -9``) never see a half-written
    file; on an error the temporary file is removed. For writers that need a path (netCDF) rather than a handle.
    A full disk or a read-only folder raises ``OSError`` saying so and naming ``path``, whatever the writer raised.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _resource_error(path, err) from None
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException as err:
        resource = _resource_error(path, err)  # before the clean-up frees the space the temporary file took
        Path(tmp).unlink(missing_ok=True)
        if resource is not err:
            raise resource from None
        raise


DISK_FULL = 1 << 20  # bytes: below this much free space a failed write is put down to a full disk


def _resource_error(path: Path, err: BaseException) -> BaseException:
    """A clear ``OSError`` for a full disk or an unwritable folder; ``err`` itself for anything else.

    Writers report a full disk in their own words (torch: ``enforce fail at inline_container.cc … unexpected pos``),
    so the exception's context chain and the free space of the folder are checked too."""
    code, cause = None, err
    while cause is not None and code is None:
        code = getattr(cause, "errno", None)
        cause = cause.__cause__ or cause.__context__
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OSError(code, f"cannot write {path}: {path.parent} is read-only or not writable "
                             f"({os.strerror(code)}); choose a writable run_root (or NMTUNE_RUNS)")
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if code in (errno.ENOSPC, errno.EDQUOT) or (isinstance(err, Exception) and free is not None and free < DISK_FULL):
        return OSError(errno.ENOSPC, f"no space left to write {path}: {free} bytes free on the file system of "
                                     f"{path.parent}; free some space or point run_root elsewhere, then rerun (finished "
                                     "steps are kept)")
    return err


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fh)`` on a temporary binary file beside ``path``, then rename it onto ``path`` (atomic_target)."""
    with atomic_target(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (the identity of checkpoints, manifests and results)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
