"""Writing files so that a reader never sees half of one, and never losing what we did not make.

- Every file and folder is written beside its final place under a temporary name that carries the
  writer's process id (`.NAME.tmp-PID-XXXX`), then renamed into place; temporaries left by a killed
  process are removed by the next write of the same name.
- A folder a command makes carries a marker file naming the command (`.sparsecircuits.json`);
  `--force` replaces only a folder whose marker names the same command.
- A directory being written is locked (`directory_lock`): a second writer is refused, naming the
  process that holds it; a lock held by a process that died is free again. The lock is the resolved
  folder's, so a symlink to it and the folder share one; `--force` through a symlink is refused.
"""

from __future__ import annotations

import csv
import errno
import glob
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from contextlib import contextmanager
from pathlib import Path


if TYPE_CHECKING:
    import torch

from .errors import SparseCircuitsError
from .schemas import PARSE_ERRORS, file_problem


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


def _short(name: str) -> str:
    """A file's name as part of its temporaries' and lock's names: a name over 200 bytes is cut and
    given a digest of the whole, so that those names stay within the file system's 255 bytes."""
    raw = name.encode(errors="surrogateescape")
    if len(raw) <= 200:
        return name
    return f"{raw[:180].decode(errors='ignore')}-{hashlib.sha256(raw).hexdigest()[:16]}"


def _temp_prefix(final: Path) -> str:
    return f".{_short(final.name)}.tmp-{os.getpid()}-"


_TEMPORARY_PART = re.compile(r"^\.(.+)\.tmp-\d+-")


def user_path(path: str | Path) -> Path:
    """The path a user knows for one inside a staging folder or temporary file (`.NAME.tmp-PID-...` -> NAME)."""
    parts = [(_TEMPORARY_PART.match(part).group(1) if _TEMPORARY_PART.match(part) else part) for part in Path(path).parts]
    return Path(*parts)


def human_bytes(n: int) -> str:
    """A size as people read it: 512 bytes, 12.3 kB, 4.5 MB, 1.2 GB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} byte{'' if n == 1 else 's'}"


def disk_error(err: BaseException, path: str | Path, needed: int | None = None, writing: bool = True) -> SparseCircuitsError:
    """One line for a file operation that failed: for a full disk, how much it needed and how much is
    free; otherwise the system's reason. Either names the user's path, never a temporary one."""
    shown = user_path(path)
    code = getattr(err, "errno", None)
    full = code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err) or "StorageFull" in str(err)
    if not full:
        reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
        return SparseCircuitsError(f"cannot write {shown}: {reason}" if writing else f"{shown}: {reason}")
    free = None
    for folder in (Path(path).parent, *Path(path).parents):
        if folder.exists():
            free = shutil.disk_usage(folder).free
            break
    sizes = ", ".join(([f"it needs {human_bytes(needed)}"] if needed else []) + ([f"{human_bytes(free)} free"] if free is not None else []))
    return SparseCircuitsError(f"no space left on the device holding {shown}" + (f" ({sizes})" if sizes else "")
                               + ": free space or write elsewhere, then run the command again")


def reserve_space(path: Path, size: int) -> None:
    """Create `path` with `size` bytes allocated now, so that a full disk is an error here and not a
    crash (SIGBUS) when a memory map of it is written later."""
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except AttributeError:  # no posix_fallocate on this platform
            f.truncate(size)
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot: size it plainly
                f.truncate(size)
            else:
                raise disk_error(err, path, size) from None


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
    prefix = f".{_short(final.name)}.tmp-"
    for path in final.parent.glob(f"{glob.escape(prefix)}*-*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if not (pid.isascii() and pid.isdigit()) or int(pid) == os.getpid() or _process_alive(int(pid)):
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
    if file_problem(Path(directory) / MARKER):
        return None
    try:
        return json.loads((Path(directory) / MARKER).read_text()).get("made_by")
    except (OSError, AttributeError, *PARSE_ERRORS):
        return None


def write_marker(directory: Path, command: str) -> None:
    atomic_write_text(Path(directory) / MARKER, json.dumps({"made_by": command}) + "\n")


def check_not_an_input(out: Path, inputs: Iterable[tuple[str, str | Path | None]], what: str = "--out") -> None:
    """An output may not be, contain or lie inside anything the command reads (through symlinks):
    writing or replacing it would destroy its own input."""
    target = Path(out).resolve()
    for name, path in inputs:
        if path is None:
            continue
        source = Path(path).resolve()
        relation = ("is" if target == source else "contains" if target in source.parents
                    else "lies inside" if source in target.parents else None)
        if relation:
            raise SparseCircuitsError(f"{what} {out} {relation} {name} {path}, which this command reads: writing there"
                                      f" would replace it or mix the output into it; choose another {what}")


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and (".tmp-" in path.name or path.name.endswith(".lock"))


def check_output_dir(out: Path, command: str, force: bool, what: str = "--out", *,
                     replaces: frozenset[str], inputs: Iterable[tuple[str, str | Path | None]] = ()) -> None:
    """Before `command` writes the folder `out`: it may not exist, be empty, or (with --force) be a
    folder that the same command made and that holds only what such a folder holds (`replaces`: the
    names of its files and folders). Anything else is refused, naming the path, and so is an `out`
    that is, holds or lies inside one of `inputs`."""
    out = Path(out)
    check_not_an_input(out, inputs, what)
    if out.is_symlink():
        raise SparseCircuitsError(f"{what} {out} is a symbolic link (to {os.readlink(out)}): give the folder itself,"
                                  f" {out.resolve()}, or choose another {what}")
    _check_folder_target(out, what)
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise SparseCircuitsError(f"{out} already exists and is not empty: choose another {what} or pass --force")
    if made_by(out) != command:
        raise SparseCircuitsError(
            f"refusing to replace {out}: --force replaces only a folder made by `sparsecircuits {command}`"
            f" (its {MARKER} says so), and this one was not; remove it yourself or choose another {what}")
    foreign = sorted(p.name for p in out.iterdir() if p.name != MARKER and not _is_temporary(p) and p.name not in replaces)
    if foreign:
        raise SparseCircuitsError(
            f"refusing to replace {out}: {out / foreign[0]} was not made by `sparsecircuits {command}`, and --force"
            f" replaces only what it made; move it out first, or choose another {what}")


def check_output_file(out: Path, force: bool, default: Path | None = None, what: str = "--out") -> None:
    """Before a command writes the file `out`: not a folder; not a file inside a run, data or circuit
    folder other than the command's own (`default`); an existing file only with --force (its own
    default is simply written again)."""
    out = Path(out)
    own = default is not None and out.resolve() == Path(default).resolve()
    if out.is_dir():
        raise SparseCircuitsError(f"{what} {out} is a folder: give the path of the file to write")
    if not own:  # no folder a command made, at any depth (a run's checkpoint/ has no marker of its own)
        for folder in Path(out).resolve().parents:
            maker = made_by(folder) if folder.is_dir() else None
            if maker is not None:
                raise SparseCircuitsError(f"{what} {out} lies inside {folder}, which `sparsecircuits {maker}` made: its"
                                          f" files are not to be written over; choose a path outside it")
    if out.exists() and not own and not force:
        raise SparseCircuitsError(f"{out} already exists: pass --force to replace it, or choose another {what}")
    check_writable(out, what)


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
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise disk_error(err, path, len(data)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JsonCache:
    """Values computed once per key and fingerprint (a model's weights' sha256, a file's digest), kept
    in a JSON file so that a resumed pipeline reads them instead of computing them again."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.entries = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, *PARSE_ERRORS):  # a damaged cache is computed again
            self.entries = {}

    def get(self, key: str, fingerprint: str, compute) -> Any:
        entry = self.entries.get(key)
        if not isinstance(entry, dict) or entry.get("fingerprint") != fingerprint:
            self.entries[key] = entry = {"fingerprint": fingerprint, "value": compute()}
            atomic_write_text(self.path, json.dumps(self.entries, indent=1))
        return entry["value"]

    def value(self, key: str) -> Any:
        return self.entries[key]["value"]


def atomic_write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Rows as CSV with these columns (other keys of the rows are left out)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors import SafetensorError  # torch and safetensors load with the first tensor, not with the CLI
    from safetensors.torch import save_file

    path = Path(path)
    clean_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        publish(Path(tmp), path)
    except (OSError, SafetensorError) as err:
        Path(tmp).unlink(missing_ok=True)
        raise disk_error(err, path, sum(v.numel() * v.element_size() for v in tensors.values())) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


def lock_name(name: str) -> str:
    return f".{_short(name)}.lock"


_held_locks: dict[str, Any] = {}  # lock path -> its open file, for the outermost holder in this process


@contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (a run, circuit or data folder) while writing it.

    The lock is a file beside the folder (`.NAME.lock`) locked with flock and holding the owner's
    process id: a second writer fails at once with a message naming that process, and the kernel
    frees the lock of a process that dies, so a stale lock never blocks anyone."""
    directory = Path(directory)
    real = directory.resolve()  # a symlink and the folder it points to are one folder: one lock
    real.parent.mkdir(parents=True, exist_ok=True)
    path = real.parent / lock_name(real.name)
    key = str(path)
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
        except PARSE_ERRORS as err:
            raise SparseCircuitsError(f"{path}:{line_no}: bad JSON ({getattr(err, 'msg', None) or type(err).__name__})") from None
        yield line_no, value
