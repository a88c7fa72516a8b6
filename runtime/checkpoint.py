"""Training checkpoints: one .npz file, written atomically, read back exactly.

A checkpoint holds named float/int arrays in groups (`params`, `state` for BatchNorm running
statistics, `opt` for the optimizer, `extra` for the loop's own arrays) and one JSON document
(`meta`: epoch, step, RNG state, metrics so far, the run config and the model's identity, the
SHA-256 of the source ONNX bytes). Arrays are stored under index keys (a0, a1, ...) with their
group and name in `meta`, so any parameter name is safe; nothing needs pickle to load.

Writes are atomic: the file is written to a temporary name in the same folder, flushed and
fsync'ed, renamed over the old checkpoint with os.replace, and the folder is fsync'ed. A process
killed at any moment leaves either the old checkpoint or the new one, never a half-written one
(at worst a stray `.tmp-*` file, which the next write removes).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from tamec.errors import InputError, UsageError

FILE = "checkpoint.npz"
FORMAT = "tamec-checkpoint-1"


def model_hash(model) -> str:
    """SHA-256 of the model's ONNX bytes (path, bytes or ModelProto): the checkpoint's model identity."""
    if isinstance(model, (bytes, bytearray)):
        data = bytes(model)
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
    else:
        data = Path(model).read_bytes()
    return hashlib.sha256(data).hexdigest()


def save(folder, groups: dict[str, dict[str, np.ndarray]], meta: dict) -> Path:
    """Write `groups` (group -> name -> array) and `meta` to folder/checkpoint.npz atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{FILE}.tmp-*"):  # left by a process killed while writing
        if not _alive(stale.name.rpartition("-")[2]):  # never another live writer's file
            stale.unlink(missing_ok=True)
    arrays, index = {}, []
    for group, named in groups.items():
        for name, a in named.items():
            arrays[f"a{len(index)}"] = np.asarray(a)
            index.append([group, name])
    doc = dict(meta, format=FORMAT, index=index)
    arrays["meta"] = np.array(json.dumps(doc, sort_keys=True))
    final = folder / FILE
    atomic_write(final, lambda f: np.savez(f, **arrays))
    return final


def atomic_write(path: Path, write) -> None:
    """Write `path` by `write(binary file)` into a temporary file beside it, fsync, rename, fsync
    the folder: readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return int(pid) != os.getpid()


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


def exists(folder) -> bool:
    """True when folder holds a checkpoint file."""
    return (Path(folder) / FILE).is_file()


def load(folder) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Read folder/checkpoint.npz back: (groups, meta). Errors name the file and say what to do."""
    path = Path(folder) / FILE
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}", hint="drop --resume to start a new run")
    try:
        with np.load(path, allow_pickle=False) as z:
            doc = json.loads(str(z["meta"][()]))
            if doc.get("format") != FORMAT:
                raise InputError(f"not a tamec checkpoint (format {doc.get('format')!r})", file=str(path))
            groups: dict[str, dict[str, np.ndarray]] = {}
            for k, (group, name) in enumerate(doc["index"]):
                groups.setdefault(group, {})[name] = z[f"a{k}"]
    except InputError:
        raise
    except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read checkpoint: {e}", file=str(path),
                         hint="delete the checkpoint folder to start over") from None
    return groups, doc
