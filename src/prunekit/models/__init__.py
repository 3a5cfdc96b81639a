"""Model definitions and the registry of named models."""
from .cifar_misc import CifarMobileNetV2, CifarVGG
from .cifar_resnet import CifarResNet
from .registry import REGISTRY, ModelError, create, load_checkpoint, register, spec

__all__ = ["CifarResNet", "CifarVGG", "CifarMobileNetV2", "REGISTRY", "ModelError", "create",
           "load_checkpoint", "register", "spec"]
