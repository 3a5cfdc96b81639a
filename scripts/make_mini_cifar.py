"""Build the embedded CIFAR-10 (JPEG) subset shipped in assets/ for the quick start.

Copies the first N train and M test images of every class from the full class-folder
JPEG archives, byte for byte (no re-encoding), into archives of the same layout.

    python scripts/make_mini_cifar.py --src ../shared/datasets/cifar10 \
        --dst assets/cifar10-mini --train-per-class 300 --test-per-class 100
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path


def subset(src: Path, dst: Path, per_class: int) -> int:
    kept: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(src, "r:gz") as tar:
        for m in tar:
            if not m.isfile() or not m.name.endswith(".jpg"):
                continue
            cls = Path(m.name).parts[-2]
            kept.setdefault(cls, []).append((m.name, tar.extractfile(m).read()))
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with tarfile.open(dst, "w:gz") as out:
        for cls in sorted(kept):
            for name, data in sorted(kept[cls])[:per_class]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0
                out.addfile(info, io.BytesIO(data))
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", default="assets/cifar10-mini")
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--test-per-class", type=int, default=100)
    a = ap.parse_args()
    src, dst = Path(a.src), Path(a.dst)
    print("train", subset(src / "train.tar.gz", dst / "train.tar.gz", a.train_per_class))
    print("test", subset(src / "test.tar.gz", dst / "test.tar.gz", a.test_per_class))


if __name__ == "__main__":
    main()
