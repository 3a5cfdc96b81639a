"""The torchvision classification zoo, ready for conformance checks (needs torchvision)."""

from __future__ import annotations

import torch
import torchvision

# Smallest convenient input per model; the default works for most CNNs.
_INPUT = {"inception_v3": 299, "googlenet": 64, "alexnet": 64}
_FIXED_224 = ("vit_", "maxvit", "swin")


def zoo_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def input_size(name: str) -> int:
    if name.startswith(_FIXED_224):
        return 224 if not name.startswith("swin") else 64
    return _INPUT.get(name, 64)


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    """Random-weight model (BN statistics randomised so masking is visible) and its input."""
    torch.manual_seed(seed)
    kwargs = {"aux_logits": True, "init_weights": True} if name in ("googlenet",
                                                                      "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    randomize(model)
    s = input_size(name)
    return model, (torch.randn(2, 3, s, s),)


def randomize(model: torch.nn.Module) -> None:
    """Re-draw every parameter and BN statistic so no channel is silent.

    torchvision initialises some layers to zero (ViT's head) or near zero
    (ConvNeXt's layer scale), which would make equivalence checks vacuous.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, (p[0].numel()) ** -0.5)
            elif name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.uniform_(-0.2, 0.2)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
