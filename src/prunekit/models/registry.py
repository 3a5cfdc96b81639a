"""Named models: one decorator on a tiny factory; torchvision classifiers by ``tv:<name>``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.pipeline import CIFAR_NORM, IMAGENET_NORM, Normalize
from .cifar_misc import CifarMobileNetV2, CifarVGG
from .cifar_resnet import CifarResNet


class ModelError(ValueError):
    """Unknown model name or a checkpoint that does not fit the model."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    norm: Normalize
    num_classes: int = 10


REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, input_size=(3, 32, 32), norm: Normalize = CIFAR_NORM):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        REGISTRY[name] = ModelSpec(name, fn, input_size, norm)
        return fn
    return deco


# The public CIFAR ResNet checkpoints were trained with ImageNet normalisation.
for _d in (20, 32, 44, 56, 110):
    register(f"resnet{_d}", norm=IMAGENET_NORM)(lambda d=_d, **kw: CifarResNet(d, option="A", **kw))
    register(f"resnet{_d}b", norm=IMAGENET_NORM)(
        lambda d=_d, **kw: CifarResNet(d, option="B", **kw))
register("vgg16_bn")(lambda **kw: CifarVGG(16, **kw))
register("vgg19_bn")(lambda **kw: CifarVGG(19, **kw))
register("mobilenet_v2")(lambda **kw: CifarMobileNetV2(**kw))


def spec(name: str) -> ModelSpec:
    if name.startswith("tv:"):
        return ModelSpec(name, lambda **kw: _torchvision(name[3:], **kw), (3, 224, 224),
                         IMAGENET_NORM, 1000)
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}, "
                         "or tv:<torchvision name>")
    return REGISTRY[name]


def create(name: str, **kwargs) -> nn.Module:
    return spec(name).factory(**kwargs)


def _torchvision(name: str, **kwargs) -> nn.Module:
    import torchvision
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(f"unknown torchvision classifier {name!r}")
    return torchvision.models.get_model(name, weights=None, **kwargs)


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> dict:
    """Load weights strictly from a state_dict, a {'state_dict': ...} file (DataParallel
    ``module.`` prefixes are stripped) or a prunekit training checkpoint ({'model': ...})."""
    from ..errors import CheckpointError
    from ..inputs import torch_load
    path = Path(path)
    try:
        obj = torch_load(path)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    state = obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} holds no state_dict")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {path} does not fit the model: {str(exc)[:400]}") from exc
    return obj if isinstance(obj, dict) else {}
