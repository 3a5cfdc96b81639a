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
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
ENV_DATA = "PRUNEKIT_DATA"
ENV_CACHE = "PRUNEKIT_CACHE"


class DataError(RuntimeError):
    """Data that is missing or not in a known layout."""


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
        return tuple(np.load(f, mmap_mode="r") for f in files)
    arrays = [*decode_archive(archives[0]), *decode_archive(archives[1])]
    cdir.mkdir(parents=True, exist_ok=True)
    for f, arr in zip(files, arrays):
        tmp = f.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, arr)
        os.replace(tmp, f)
    return tuple(arrays)


def decode_archive(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``<split>/<class>/<name>.jpg`` members, sorted by (class, name)."""
    from PIL import Image
    items = []
    with tarfile.open(path, "r:gz") as tar:
        for m in tar:
            if not m.isfile() or not m.name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            parts = Path(m.name).parts
            if len(parts) < 2 or parts[-2] not in CLASSES:
                raise DataError(f"{path}: member {m.name} is not <class>/<image>")
            data = tar.extractfile(m).read()
            img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)
            items.append((CLASSES.index(parts[-2]), parts[-1], img))
    if not items:
        raise DataError(f"{path} holds no images")
    items.sort(key=lambda t: (t[0], t[1]))
    return np.stack([t[2] for t in items]), np.array([t[0] for t in items], dtype=np.int64)


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
    with open(path, "rb") as f:
        d = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(data), np.asarray(d[b"labels"], dtype=np.int64)


def _canonical(folder: Path) -> tuple[np.ndarray, ...]:
    parts = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    tx, ty = _read_batch(folder / "test_batch")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), tx, ty)
