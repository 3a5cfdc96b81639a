"""CIFAR-10 from the canonical ``cifar-10-batches-py`` folder or from class-folder JPEG archives.

Images are decoded once and cached as ``.npy`` arrays (uint8, NHWC); later loads
memory-map the cache and take well under a second.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np

from ..errors import PrunekitError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
ENV_DATA = "PRUNEKIT_DATA"
ENV_CACHE = "PRUNEKIT_CACHE"


class DataError(PrunekitError, RuntimeError):
    """Data that is missing, unreadable or not in a known layout (the message names the
    file and says what to do)."""


def find_cifar(root: str | os.PathLike[str] | None) -> Path:
    """Resolve the CIFAR-10 folder: the argument, else $PRUNEKIT_DATA (or its cifar10/)."""
    candidates = []
    if root:
        candidates.append(Path(root))
    elif os.environ.get(ENV_DATA):
        base = Path(os.environ[ENV_DATA])
        candidates += [base, base / "cifar10", base / "datasets" / "cifar10"]
    for c in candidates:
        for d in (c, c / "cifar-10-batches-py"):
            if (d / "data_batch_1").is_file() or (d / "train.tar.gz").is_file():
                return d
    where = root or os.environ.get(ENV_DATA) or "(none given; set --data or $PRUNEKIT_DATA)"
    raise DataError(f"no CIFAR-10 found at {where}: expected cifar-10-batches-py/ or "
                    "train.tar.gz + test.tar.gz")


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "prunekit")


def load_cifar10(root: str | os.PathLike[str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y); x is uint8 (N, 32, 32, 3), y int64."""
    folder = find_cifar(root)
    if (folder / "data_batch_1").is_file():
        return _canonical(folder)
    return _jpeg_cached(folder)


def _jpeg_cached(folder: Path) -> tuple[np.ndarray, ...]:
    archives = [folder / "train.tar.gz", folder / "test.tar.gz"]
    for a in archives:
        if not a.is_file():
            raise DataError(f"missing {a}")
    key = hashlib.sha256("|".join(f"{a.resolve()}:{a.stat().st_size}:{a.stat().st_mtime_ns}"
                                  for a in archives).encode()).hexdigest()[:16]
    cdir = cache_dir() / f"cifar10-jpeg-{key}"
    files = [cdir / f"{n}.npy" for n in ("train_x", "train_y", "test_x", "test_y")]
    if all(f.is_file() for f in files):
        try:
            return tuple(np.load(f, mmap_mode="r") for f in files)
        except (OSError, ValueError, EOFError) as exc:
            warnings.warn(f"the decoded-image cache {cdir} is unreadable ({exc}); decoding "
                          "the archives again")
    arrays = [*decode_archive(archives[0]), *decode_archive(archives[1])]
    _write_cache(cdir, files, arrays)
    return tuple(arrays)


def _write_cache(cdir: Path, files: list[Path], arrays: list[np.ndarray]) -> None:
    """Cache the decoded arrays; a cache that cannot be written (full disk, read-only
    home) is skipped with a warning, and leaves no partial file."""
    from ..outputs import OutputError, make_dirs, remove_empty, save_numpy
    created: list[Path] = []
    try:
        created = make_dirs(cdir)
        for f, arr in zip(files, arrays):
            save_numpy(arr, f)
    except OutputError as exc:
        for f in files:
            try:
                f.unlink(missing_ok=True)
            except OSError:
                pass
        remove_empty(created)
        warnings.warn(f"not caching the decoded images ({exc}); set $PRUNEKIT_CACHE to a "
                      "writable folder to make later loads fast")


def decode_archive(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``<split>/<class>/<name>.jpg`` members, sorted by (class, name)."""
    from PIL import Image
    items = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                if not m.isfile() or not m.name.lower().endswith((".jpg", ".jpeg", ".png")):
                    continue
                parts = Path(m.name).parts
                if len(parts) < 2 or parts[-2] not in CLASSES:
                    raise DataError(f"{path}: member {m.name} is not <class>/<image>")
                items.append((CLASSES.index(parts[-2]), parts[-1],
                              _image(path, m.name, tar.extractfile(m).read())))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path} is not a readable .tar.gz archive ({exc}); download or "
                        "create it again") from exc
    if not items:
        raise DataError(f"{path} holds no images")
    items.sort(key=lambda t: (t[0], t[1]))
    return np.stack([t[2] for t in items]), np.array([t[0] for t in items], dtype=np.int64)


def _image(archive: Path, member: str, data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{archive}: member {member} is not a readable image ({exc}); "
                        "replace or remove it") from exc


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles the canonical batches (dicts of numpy arrays) and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name} from a CIFAR batch")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One canonical batch; anything unreadable is a DataError naming the file."""
    again = "download cifar-10-python.tar.gz and unpack it again"
    try:
        with open(path, "rb") as f:
            d = _ArrayOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[b"labels"], dtype=np.int64).reshape(-1)
    except DataError as exc:
        raise DataError(f"{path}: {exc}; {again}") from exc
    except FileNotFoundError as exc:
        raise DataError(f"missing CIFAR-10 batch {path}; {again}") from exc
    except Exception as exc:   # truncated or foreign pickles fail in many ways
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(exc).__name__}: "
                        f"{exc}); {again}") from exc
    if len(labels) != len(data):
        raise DataError(f"{path} holds {len(data)} images but {len(labels)} labels; {again}")
    return np.ascontiguousarray(data.transpose(0, 2, 3, 1)), labels


def _canonical(folder: Path) -> tuple[np.ndarray, ...]:
    parts = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    tx, ty = _read_batch(folder / "test_batch")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), tx, ty)
