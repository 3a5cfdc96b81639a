"""Data sets, seeded augmentation and batch iteration."""

from .cifar import CLASSES, DataError, find_cifar, load_cifar10
from .fashion import load_fashion_mnist, read_idx
from .pipeline import CIFAR_NORM, IMAGENET_NORM, Batches, Normalize, calibration_set
from .split import holdout_split

__all__ = ["CLASSES", "DataError", "find_cifar", "load_cifar10", "Batches", "Normalize",
           "CIFAR_NORM", "IMAGENET_NORM", "calibration_set", "load_fashion_mnist",
           "read_idx", "holdout_split"]
