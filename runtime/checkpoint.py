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
import zipfile
import zlib
from pathlib import Path

import numpy as np

from tamec.errors import InputError, UsageError
from tamec.files import atomic_write, output_error

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
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(e, folder) from None
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


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return int(pid) != os.getpid()


def exists(folder) -> bool:
    """True when folder holds a checkpoint file."""
    return (Path(folder) / FILE).is_file()


def load(folder) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Read folder/checkpoint.npz back: (groups, meta). A missing, truncated or corrupt file (bad
    CRC, not a zip, no or broken index) is one InputError naming the file; what the arrays and
    `meta` must hold for a run is checked by the loop that reads them (tamec.runtime.train)."""
    path = Path(folder) / FILE
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}", hint="drop --resume to start a new run")
    bad = lambda why: InputError(f"damaged checkpoint: {why}", file=str(path),  # noqa: E731
                                 hint="delete the checkpoint folder to start over")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files") or "meta" not in z.files:
                raise bad("no meta record")
            doc = json.loads(str(z["meta"][()]))
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise InputError(f"not a tamec checkpoint (format {doc.get('format') if isinstance(doc, dict) else None!r})",
                                 file=str(path), hint="delete the checkpoint folder to start over")
            index = doc.get("index")
            if not isinstance(index, list) or not all(
                    isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in index):
                raise bad("its index of arrays is missing or malformed")
            groups: dict[str, dict[str, np.ndarray]] = {}
            for k, (group, name) in enumerate(index):
                if f"a{k}" not in z.files:
                    raise bad(f"array {group}/{name} is missing")
                groups.setdefault(group, {})[name] = z[f"a{k}"]  # reading checks the member's CRC
    except InputError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    return groups, doc
