"""Every registered method x every architecture of the conformance set x every named
check of :mod:`prunekit.testing`, one test each (a failure hides no other)."""

from __future__ import annotations

import warnings

import pytest

from prunekit.methods import methods
from prunekit.testing import CHECKS, NEED_RUN, Case, Refused, architectures

ARCHS = architectures()
_CASES: dict[tuple[str, str], Case] = {}


def _case(method: str, arch: str) -> Case:
    key = (method, arch)
    if key not in _CASES:
        _CASES[key] = Case(method, ARCHS[arch])
    return _CASES[key]


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", sorted(methods()))
def test_method_conformance(method, arch, check):
    case = _case(method, arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            CHECKS[check](case)
        except Refused as exc:
            assert check in NEED_RUN
            pytest.skip(f"refused up front, as the runs check allows: {exc}")


def test_the_conformance_set_covers_the_families():
    """CNNs with and without BN, depthwise, a ViT and a ConvNeXt, and models of each
    optional zoo the engine supports (Hugging Face: a ViT classifier and a Llama with
    grouped-query attention on token ids; Ultralytics: YOLOv8n). The test extras
    install all of them."""
    assert {"cnn-bn", "cnn-no-bn", "depthwise", "timm-vit", "timm-convnext", "hf-vit",
            "hf-llama", "yolo"} <= set(ARCHS)
    assert {"oneshot", "submodular", "lapp", "emo", "space"} <= set(methods())
