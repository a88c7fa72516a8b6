"""Reading and writing user files safely: inputs must be regular files (a FIFO would block a
reader forever), output folders are probed before work starts, and outputs are written atomically
so a full disk or a kill leaves the old file or the new one, never half of one. Every failure is
one `TamecError` naming the file and what to do."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from tamec.errors import OutputError, UsageError

# errors of the user's file system, not bugs: the CLI turns them into one line. The first set can
# only come from a write (full disk, quota, file too large, read-only file system).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
OUTPUT_ERRNOS = WRITE_ERRNOS | {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


def output_error(e: OSError, path=None) -> OutputError:
    """The OutputError for a failed write of `path` (or the OSError's own file name)."""
    where = path if path is not None else (e.filename or "an output file")
    hint = ("free some disk space or pick another output folder" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "pick a writable output folder")
    return OutputError(f"cannot write {where}: {e.strerror or e}", hint=hint)


def regular_file(path, hint: str) -> Path:
    """`path` as a Path if it names a regular file, else UsageError: reading a FIFO or a device
    would block or never end, and a folder cannot be read at all."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no file {p}", hint=hint)
    if not p.is_file():
        raise UsageError(f"{p} is not a regular file (a folder, FIFO or device)", hint=hint)
    return p


def writable_folder(out, flag: str = "--out") -> Path:
    """Create `out` if needed and prove it is writable (a probe file), else OutputError."""
    p = Path(out)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".tamec-probe-"):
            pass
    except OSError as e:
        raise OutputError(f"output folder {p} is not writable: {e.strerror or e}",
                          hint=f"pick another {flag} folder") from None
    return p


def atomic_write(path, write) -> None:
    """Write `path` by `write(binary file)` into a temporary file beside it, fsync, rename, fsync
    the folder: readers see the old file or the new one, never half of one. A failed write
    (full disk, read-only folder) removes the temporary file and raises OutputError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise output_error(e, path) from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
