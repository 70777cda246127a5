"""Atomic writes: a reader (or a running server) sees the old file or folder or the new one, never half.

Every stage writes through these: a temporary sibling, then a rename (files) or a rename/exchange
(folders), so a crash or Ctrl-C mid-write leaves what was there before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and one rename."""
    write_bytes_atomically(path, text.encode())


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomically(path: str | Path, document: Any) -> None:
    """Pretty, sorted JSON (diff-friendly), written atomically."""
    write_text_atomically(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def staged_folder(target: str | Path, stage_above_parent: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `target` in one step.

    The staging folder sits beside `target`, or beside its parent with `stage_above_parent` (for folders
    inside a tree that others scan, such as a Triton model repository). On failure (or Ctrl-C) it is removed
    and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    where, prefix = _staging_place(target, stage_above_parent)
    staging_root = Path(tempfile.mkdtemp(dir=where, prefix=prefix))
    try:
        staged = staging_root / target.name
        staged.mkdir()
        yield staged
        replace_folder(staged, target)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


def remove_leftover_staging(target: str | Path, stage_above_parent: bool = False) -> None:
    """Remove the staging folders that a killed `staged_folder(target)` left behind.

    `target`'s name may be a glob pattern (`checkpoints/step-*`) for a family of targets. Call it after a
    write, when no other writer of these targets can be running: it does not tell a killed writer's folder
    from a live one's.
    """
    where, prefix = _staging_place(Path(target), stage_above_parent)
    for leftover in where.glob(f"{prefix}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _staging_place(target: Path, stage_above_parent: bool) -> tuple[Path, str]:
    """The folder that holds `target`'s staging folders, and their name prefix (hidden: scanners skip them)."""
    if stage_above_parent:
        return target.parent.parent, f".{target.parent.name}.{target.name}.staging-"
    return target.parent, f".{target.name}.staging-"


def replace_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target` atomically; an existing `target` ends up at `new` (the caller deletes it)."""
    if not target.exists():
        os.rename(new, target)
        return
    if _rename_exchange(new, target):
        return
    # No renameat2 (old kernel/filesystem): two renames, the gap is one rename long
    old = new.with_name(new.name + ".old")
    os.rename(target, old)
    os.rename(new, target)
    os.rename(old, new)


def _rename_exchange(first: Path, second: Path) -> bool:
    """Linux renameat2(RENAME_EXCHANGE): swap two paths in one step. False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))
