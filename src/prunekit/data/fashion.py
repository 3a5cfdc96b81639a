"""Fashion-MNIST from IDX files, e.g. Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .cifar import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot")
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
          "t10k-labels-idx1-ubyte")


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic, dims, then big-endian data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise DataError(f"{path}: unknown IDX type code {data[2]:#x}")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path}: expected {dims} values, found {arr.size}")
    return arr.reshape(dims)


def load_fashion_mnist(root: str | os.PathLike[str] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y); x is uint8 (N, 28, 28, 1), y int64.

    ``root`` defaults to $PRUNEKIT_DATA/fashion-mnist, then the Debian package's folder.
    """
    candidates = [Path(root)] if root else []
    if not root and os.environ.get("PRUNEKIT_DATA"):
        candidates.append(Path(os.environ["PRUNEKIT_DATA"]) / "fashion-mnist")
    if not root:
        candidates.append(DEBIAN_DIR)
    for c in candidates:
        paths = [next((p for p in (c / f, c / f"{f}.gz") if p.is_file()), None) for f in _FILES]
        if all(paths):
            tx, ty, vx, vy = (read_idx(p) for p in paths)
            return (tx[..., None].copy(), ty.astype(np.int64), vx[..., None].copy(),
                    vy.astype(np.int64))
    raise DataError(f"no Fashion-MNIST IDX files in {[str(c) for c in candidates]}; "
                    "install Debian's dataset-fashion-mnist or pass the folder")
