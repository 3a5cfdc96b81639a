"""A held-out split of a training set: what model selection (the best checkpoint of a
recovery, a per-layer allocation scored on accuracy) is judged on, so the test set is
only ever used to report."""

from __future__ import annotations

import numpy as np

__all__ = ["holdout_split"]


def holdout_split(labels: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out): sorted indices into ``labels``, disjoint, together all of them.
    ``n`` are held out, the same share of every class (as far as whole images allow;
    seeded), so the held-out accuracy weighs the classes as the training set does."""
    labels = np.asarray(labels)
    total = len(labels)
    if not 0 < n < total:
        raise ValueError(f"a held-out split of {n} images needs 0 < n < {total} (the "
                         "training images)")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n / total
    take = np.floor(share).astype(int)
    rest = n - int(take.sum())            # largest remainders get the leftover images
    take[np.argsort(-(share - take), kind="stable")[:rest]] += 1
    held = np.concatenate([rng.choice(np.nonzero(labels == c)[0], k, replace=False)
                           for c, k in zip(classes, take)])
    held = np.sort(held)
    kept = np.setdiff1d(np.arange(total), held)
    return kept, held
