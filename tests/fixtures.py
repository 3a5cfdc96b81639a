"""Tiny synthetic CIFAR-10 folders in both layouts."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from prunekit.data import CLASSES


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[..., 0] = (y * 25)[:, None, None]  # a learnable signal: the red channel encodes the class
    return x, y.astype(np.int64)


def canonical(root: Path, n_train: int = 50, n_test: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x, y = images(n_train, 0)
    parts = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(parts, 1):
        _dump(folder / f"data_batch_{i}", x[idx], y[idx])
    tx, ty = images(n_test, 1)
    _dump(folder / "test_batch", tx, ty)
    return folder


def _dump(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    data = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": y.tolist()}, f)


def jpeg(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = images(n, seed)
        with tarfile.open(root / f"{split}.tar.gz", "w:gz") as tar:
            for i, (img, label) in enumerate(zip(x, y)):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=95)
                info = tarfile.TarInfo(f"{split}/{CLASSES[label]}/{i:04d}.jpg")
                info.size = len(buf.getvalue())
                buf.seek(0)
                tar.addfile(info, buf)
    return root
