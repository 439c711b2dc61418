"""Writing files so that a reader never sees half of one, and never losing what we did not make.

- Every file and folder is written beside its final place under a temporary name that carries the
  writer's process id (`.NAME.tmp-PID-XXXX`), then renamed into place; temporaries left by a killed
  process are removed by the next write of the same name.
- A folder a command makes carries a marker file naming the command (`.sparsecircuits.json`);
  `--force` replaces only a folder whose marker names the same command.
- A directory being written is locked (`directory_lock`): a second writer is refused, naming the
  process that holds it; a lock held by a process that died is free again.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import SparseCircuitsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(path: Path, final: Path) -> None:
    """Give a staged file or folder (mkstemp/mkdtemp make them private) the usual permissions,
    then rename it into place."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_umask())
    os.replace(path, final)


MARKER = ".sparsecircuits.json"


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.tmp-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temporaries(final: Path) -> list[Path]:
    """Remove the temporaries of `final` left by processes that no longer run (a `kill -9` mid-write)."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for path in final.parent.glob(f".{final.name}.tmp-*-*"):
        pid = path.name[len(f".{final.name}.tmp-"):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def check_writable(path: Path, what: str = "--out") -> None:
    """Fail before any work if `path` (a file or folder to create or replace) cannot be written:
    the nearest existing folder above it must accept a new file."""
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SparseCircuitsError(f"cannot write {path}: {ancestor} is a file, not a folder; choose another {what}")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        reason = "read-only file system" if err.errno == errno.EROFS else (err.strerror or str(err)).lower()
        raise SparseCircuitsError(f"cannot write {path}: {ancestor} is not writable ({reason}); choose another {what}") from None


def _check_folder_target(out: Path, what: str) -> None:
    """`out` is a folder or nothing yet, and both it and the folder it sits in can be written."""
    if out.exists() and not out.is_dir():
        raise SparseCircuitsError(f"{what} {out} is a file, not a folder: choose another {what}")
    check_writable(out, what)  # where staging folders and locks go
    if out.exists():
        check_writable(out / MARKER, what)


def output_folder(out: Path, what: str = "--out") -> Path:
    """A folder that a resumable pipeline (demo, sweep, compare) writes into and may reuse: created
    if missing, refused up front if it is a file or cannot be written."""
    out = Path(out)
    _check_folder_target(out, what)
    out.mkdir(parents=True, exist_ok=True)
    return out


def made_by(directory: Path) -> str | None:
    """The command named by a folder's marker file, or None."""
    try:
        return json.loads((Path(directory) / MARKER).read_text()).get("made_by")
    except (OSError, ValueError, AttributeError):
        return None


def write_marker(directory: Path, command: str) -> None:
    atomic_write_text(Path(directory) / MARKER, json.dumps({"made_by": command}) + "\n")


def check_output_dir(out: Path, command: str, force: bool, what: str = "--out") -> None:
    """Before `command` writes the folder `out`: it may not exist, be empty, or (with --force) be a
    folder that the same command made. Anything else is refused, naming the path."""
    out = Path(out)
    _check_folder_target(out, what)
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise SparseCircuitsError(f"{out} already exists and is not empty: choose another {what} or pass --force")
    if made_by(out) != command:
        raise SparseCircuitsError(
            f"refusing to replace {out}: --force replaces only a folder made by `sparsecircuits {command}`"
            f" (its {MARKER} says so), and this one was not; remove it yourself or choose another {what}")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    clean_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Rows as CSV with these columns (other keys of the rows are left out)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    clean_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise SparseCircuitsError(f"{path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SparseCircuitsError(f"{path} is corrupted or truncated ({err}): retrain, or resume from an earlier copy") from None


@contextmanager
def staged_directory(final: Path, command: str | None = None) -> Iterator[Path]:
    """Yield an empty folder beside `final`. If the block succeeds the folder replaces `final` whole;
    if it fails the folder is removed and `final` is left as it was. With `command`, the folder
    gets the marker that lets that command's --force replace it later."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(final)
    staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
    try:
        yield staging
        if command is not None:
            write_marker(staging, command)
        old = None
        if final.exists():  # moved aside under a temporary name, so a killed process leaves nothing that looks valid
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
            os.replace(final, old / final.name)
        publish(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


_held_locks: dict[str, Any] = {}  # lock path -> its open file, for the outermost holder in this process


@contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (a run, circuit or data folder) while writing it.

    The lock is a file beside the folder (`.NAME.lock`) locked with flock and holding the owner's
    process id: a second writer fails at once with a message naming that process, and the kernel
    frees the lock of a process that dies, so a stale lock never blocks anyone."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    path = directory.parent / f".{directory.name}.lock"
    key = str(path.resolve())
    if key in _held_locks:  # one process may nest its own locks: the outermost one releases
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on this platform: writers are not serialised
        yield
        return
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise SparseCircuitsError(
                f"{directory} is being written by another sparsecircuits process (pid {holder}):"
                " wait for it to finish or stop it, then try again") from None
        try:  # the file may have been removed by its last holder after we opened it: lock the new one
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held_locks[key] = handle
    try:
        yield
    finally:
        del _held_locks[key]
        path.unlink(missing_ok=True)
        handle.close()


def iter_jsonl(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line; bad JSON is an error naming the line."""
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise SparseCircuitsError(f"{path}:{line_no}: bad JSON ({err.msg})") from None
        yield line_no, value
