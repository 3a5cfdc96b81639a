"""CIFAR-10 loaders (both layouts), caching, safe unpickling, augmentation, calibration."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import canonical, images, jpeg
from prunekit.data import (CIFAR_NORM, Batches, DataError, calibration_set, find_cifar,
                           load_cifar10)
from prunekit.data.pipeline import cutout, random_crop_flip


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))


def test_canonical_layout(tmp_path):
    folder = canonical(tmp_path)
    tx, ty, vx, vy = load_cifar10(tmp_path)
    ex, ey = images(50, 0)
    assert tx.shape == (50, 32, 32, 3) and tx.dtype == np.uint8 and vx.shape == (20, 32, 32, 3)
    assert np.array_equal(np.sort(ty), np.sort(ey))
    assert find_cifar(folder) == folder


def test_jpeg_layout_decodes_sorted_and_caches(tmp_path):
    jpeg(tmp_path / "c10")
    tx, ty, vx, vy = load_cifar10(tmp_path / "c10")
    assert tx.shape == (40, 32, 32, 3) and vy.shape == (20,)
    assert (np.diff(ty) >= 0).all(), "sorted by class"
    red = tx[..., 0].reshape(len(tx), -1).mean(1)
    assert np.corrcoef(red, ty)[0, 1] > 0.9, "JPEG keeps the class signal"
    cached = list((tmp_path / "cache").glob("cifar10-jpeg-*/*.npy"))
    assert len(cached) == 4
    again = load_cifar10(tmp_path / "c10")
    assert np.array_equal(np.asarray(again[0]), tx)


def test_env_variable_and_missing_data(tmp_path, monkeypatch):
    canonical(tmp_path / "d")
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "d"))
    assert load_cifar10(None)[0].shape[0] == 50
    monkeypatch.delenv("PRUNEKIT_DATA")
    with pytest.raises(DataError, match="no CIFAR-10"):
        load_cifar10(tmp_path / "nothing")


def test_refuses_code_in_pickles(tmp_path):
    folder = canonical(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_cifar10(tmp_path)


def test_augmentation_is_seeded_and_shape_preserving():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every output is a shifted (and maybe flipped) window of the zero-padded input
    pad = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        ok = any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(2))
                 for oy in range(9) for ox in range(9)
                 for w in [pad[i, :, oy:oy + 32, ox:ox + 32]])
        assert ok


def test_cutout_zeroes_one_clipped_square_per_image():
    x = torch.ones(64, 3, 32, 32)
    a = cutout(x, torch.Generator().manual_seed(0), 8)
    assert torch.equal(a, cutout(x, torch.Generator().manual_seed(0), 8))
    zero = (a == 0).all(1)                      # (b, h, w): same square in every channel
    assert torch.equal(zero, (a == 0).any(1))
    counts = zero.flatten(1).sum(1)
    assert counts.max() == 64 and counts.min() >= 16 and (counts < 64).any()  # clipped at borders
    for z in zero:                              # the zeroed pixels form one rectangle
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        assert z.sum() == len(rows) * len(cols) and z[rows][:, cols].all()
    xs, ys = images(40, 1)
    plain = torch.cat([b for b, _ in Batches(xs, ys, 8, CIFAR_NORM, train=True, seed=1)])
    cut = torch.cat([b for b, _ in Batches(xs, ys, 8, CIFAR_NORM, train=True, seed=1, cutout=6)])
    assert ((cut == 0) & (plain != 0)).flatten(1).any(1).all()
    with pytest.raises(ValueError, match="cutout"):
        Batches(xs, ys, 8, CIFAR_NORM, cutout=-1)


def test_batches_epochs_and_shards():
    x, y = images(100, 0)
    b = Batches(x, y, 16, CIFAR_NORM, train=True, seed=3)
    e0 = torch.cat([yy for _, yy in b])
    b.set_epoch(1)
    e1 = torch.cat([yy for _, yy in b])
    assert sorted(e0.tolist()) == sorted(y.tolist()) and not torch.equal(e0, e1)
    r0 = Batches(x, y, 16, CIFAR_NORM, train=True, seed=3, shard=(0, 2))
    r1 = Batches(x, y, 16, CIFAR_NORM, train=True, seed=3, shard=(1, 2))
    both = torch.cat([yy for _, yy in r0] + [yy for _, yy in r1])
    assert sorted(both.tolist()) == sorted(y.tolist())
    xb, _ = next(iter(Batches(x, y, 4, CIFAR_NORM)))
    assert xb.dtype == torch.float32 and xb.shape == (4, 3, 32, 32)


def test_calibration_set():
    x, y = images(200, 0)
    cx, cy = calibration_set(x, y, 50, seed=1, balanced=True)
    assert len(cx) == 50 and np.bincount(cy, minlength=10).min() >= 5
    cx2, _ = calibration_set(x, None, 30, seed=1)
    assert len(cx2) == 30
    with pytest.raises(ValueError):
        calibration_set(x, None, 300)


def _write_idx(path, arr, code):
    import gzip
    header = bytes([0, 0, code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_fashion_mnist_idx(tmp_path):
    from prunekit.data import load_fashion_mnist, read_idx
    rng = np.random.default_rng(0)
    tx = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    ty = (np.arange(12) % 10).astype(np.uint8)
    for name, arr, code in (("train-images-idx3-ubyte", tx, 8), ("train-labels-idx1-ubyte", ty, 8),
                            ("t10k-images-idx3-ubyte", tx[:4], 8),
                            ("t10k-labels-idx1-ubyte", ty[:4], 8)):
        _write_idx(tmp_path / f"{name}.gz", arr, code)
    a, b, c, d = load_fashion_mnist(tmp_path)
    assert a.shape == (12, 28, 28, 1) and np.array_equal(a[..., 0], tx) and b.dtype == np.int64
    assert np.array_equal(d, ty[:4])
    with pytest.raises(DataError):
        load_fashion_mnist(tmp_path / "missing")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package():
    from prunekit.data import load_fashion_mnist
    tx, ty, vx, vy = load_fashion_mnist()
    assert tx.shape == (60000, 28, 28, 1) and vx.shape == (10000, 28, 28, 1)
    assert np.bincount(ty).tolist() == [6000] * 10
