"""Every file and folder prunekit writes goes through here.

- Files are written atomically: into a hidden temporary file beside the target, then
  renamed over it, so a reader sees the old file or the complete new one, never half.
- Folders are built in a hidden temporary folder beside the target and renamed into
  place at the end (:func:`staged_folder`); an existing output is replaced only when
  the caller says so (``--overwrite``).
- A run takes an exclusive lock per output (:class:`OutputLock`), so a second run on
  the same ``--out`` is refused with the first one's pid instead of colliding.
- Temporary files and folders are removed on any error, and on SIGINT/SIGTERM (the
  command line turns SIGTERM into an exception, see :func:`signals_raise`).
- A failed write (full disk, read-only file system, permission) raises
  :class:`OutputError` with one sentence naming the target, never a library's
  traceback; what was there before is untouched.
- Files and folders get the modes a plain ``open``/``mkdir`` would: the umask is
  honoured.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import PrunekitError


class OutputError(PrunekitError):
    """A write that cannot be done: full disk, read-only or unwritable target, an output
    that exists or is in use."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so every cleanup handler runs."""


# ------------------------------------------------------------------ messages
def os_error_message(exc: OSError, path: str | os.PathLike[str]) -> str:
    """One sentence for a failed write of ``path``."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device while writing {path}; free some space or choose " \
               "another --out"
    if code == errno.EROFS:
        return f"cannot write {path}: read-only file system; choose another --out"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot write {path}: permission denied; choose a folder you can write to"
    if code == errno.EFBIG:
        return f"cannot write {path}: file too large for this file system or limit"
    return f"cannot write {path}: {exc.strerror or exc}"


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` (and a library's wrapped write error) into :class:`OutputError`."""
    try:
        yield
    except (OutputError, KeyboardInterrupt):
        raise
    except OSError as exc:
        raise OutputError(os_error_message(exc, path)) from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike[str]) -> None:
    """Give a file or folder made by ``tempfile`` (mode 0600/0700) the mode a plain
    ``open``/``mkdir`` would: 0666/0777 less the process umask."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


# ------------------------------------------------------------------ folders
def make_dirs(path: str | os.PathLike[str], target: str | os.PathLike[str] | None = None
              ) -> list[Path]:
    """``mkdir -p``; returns the folders it created (outermost first), for
    :func:`remove_empty` to undo. ``target``: the output named in errors (default
    ``path``)."""
    path = Path(path)
    with writing(target or path):   # a folder on the way we may not even look into
        missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
        first = next(p for p in [path, *path.parents] if p.exists() or p == Path(p.anchor))
        if first.exists() and not first.is_dir():
            raise OutputError(f"cannot write {target or path}: {first} is a file, not a "
                              "folder")
        path.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(created: list[Path]) -> None:
    """Remove the folders :func:`make_dirs` created, innermost first, where still empty."""
    for p in reversed(created):
        with contextlib.suppress(OSError):
            p.rmdir()


# ------------------------------------------------------------------ files
def _write_all(f: Any, data: bytes) -> None:
    """The one place bytes reach a file (tests inject faults here)."""
    f.write(data)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (created with the umask's mode)."""
    path = Path(path)
    created = make_dirs(path.parent, path)
    tmp = None
    try:
        with writing(path):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                _write_all(f, data)
                f.flush()
                os.fsync(f.fileno())
            honour_umask(tmp)
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        remove_empty(created)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, default=str))


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically (serialised in memory first, so a full disk is an
    ``OutputError`` and the previous file, a completed checkpoint, stays intact)."""
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def save_safetensors(state: dict, path: str | os.PathLike[str]) -> None:
    from safetensors.torch import save
    write_bytes(path, save(state))


def save_numpy(array: Any, path: str | os.PathLike[str]) -> None:
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes(path, buf.getvalue())


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------ staged folders
def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and next(path.iterdir(), None) is None


def replace_folder(src: Path, dst: Path, overwrite: bool = False) -> None:
    """Rename the finished folder ``src`` to ``dst``. An existing non-empty ``dst`` is
    replaced only with ``overwrite`` (it is moved aside first and restored if the
    rename fails, so it is never lost half-way)."""
    with writing(dst):
        if dst.exists() and not is_empty_dir(dst):
            if not overwrite:
                raise OutputError(f"{dst} exists; pass --overwrite to replace it or choose "
                                  "another --out")
            aside = dst.with_name(f".{dst.name}.replaced-{os.getpid()}")
            os.replace(dst, aside)
            try:
                os.replace(src, dst)
            except BaseException:
                os.replace(aside, dst)
                raise
            shutil.rmtree(aside, ignore_errors=True)
            return
        if dst.is_dir():
            dst.rmdir()
        os.replace(src, dst)


@contextlib.contextmanager
def staged_folder(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``path``; when the block ends it becomes
    ``path`` (see :func:`replace_folder`); on any error or signal it is removed, with
    any parent folders it had to create."""
    path = Path(path)
    created = make_dirs(path.parent, path)
    try:
        with writing(path):
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.",
                                        suffix=".partial"))
            honour_umask(tmp)
    except BaseException:
        remove_empty(created)
        raise
    try:
        yield tmp
        replace_folder(tmp, path, overwrite)
    except OutputError as exc:  # name the output the user asked for, not the staging folder
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(created)
        raise OutputError(str(exc).replace(str(tmp), str(path))) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(created)
        raise


# ------------------------------------------------------------------ locks
class OutputLock:
    """An exclusive lock on an output (folder or file) for the life of one run.

    The lock is ``.NAME.lock`` beside the output, holding the owner's pid; it is an
    ``flock``, so a run that was killed does not leave a stale lock (the file is
    removed on release; a killed run's file is simply taken over)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.file = self.path.parent / f".{self.path.name}.lock"
        self.fd: int | None = None
        self.created: list[Path] = []

    def __enter__(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:     # no flock (Windows): runs are not guarded
            return self
        self.created = make_dirs(self.file.parent, self.path)
        try:
            self.fd = self._take(fcntl)
        except BaseException:
            remove_empty(self.created)
            raise
        return self

    def _take(self, fcntl: Any) -> int:
        while True:
            with writing(self.path):
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputError(f"output {self.path} is in use by pid {pid} (another "
                                  "prunekit run); wait for it to finish or choose another "
                                  "--out") from None
            try:    # the previous holder may have removed the file after we opened it
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
            os.close(fd)

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.file)
            os.close(self.fd)
            self.fd = None
        remove_empty(self.created)


# ------------------------------------------------------------------ resumable work
KEPT: list[str] = []   # notes for the error line: work kept for --resume by a failed run


@contextlib.contextmanager
def resumable(folder: str | os.PathLike[str], state: str = "*",
              fresh: bool = True) -> Iterator[Path]:
    """Work that ``--resume`` continues, in ``folder``. If the block fails or is
    stopped, a folder holding resumable state (a file matching ``state``, other than
    config.json) is kept and :data:`KEPT` says where; one with nothing to resume is
    removed (or emptied, if it existed before) when the run was ``fresh``."""
    folder = Path(folder)
    existed = folder.exists()
    created = make_dirs(folder)
    try:
        yield folder
    except BaseException:
        if any(p.is_file() and p.name != "config.json" for p in folder.rglob(state)):
            KEPT.append(f"the work so far is kept in {folder}: rerun with --resume to "
                        "continue")
        elif fresh:
            if existed:
                for p in folder.iterdir():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            else:
                shutil.rmtree(folder, ignore_errors=True)
                remove_empty(created)
        raise


# ------------------------------------------------------------------ signals
@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise :class:`Terminated` (so temporary
    outputs are cleaned up as on Ctrl-C); the previous handlers are restored after."""
    def _raise(signum: int, frame: Any) -> None:
        raise Terminated(signal.Signals(signum).name)

    old = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        try:
            old[sig] = signal.signal(sig, _raise)
        except ValueError:      # not the main thread: leave signals alone
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
