"""The conformance set: small models of each family the engine supports, with data.

Every architecture builds a fresh model (seeded, random weights) and knows its
example input and how to make calibration, training and labelled data for it, so
every registered method can run on it in seconds. Families whose packages are
optional (timm, transformers, ultralytics) are listed only where installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..methods.protocol import Context


@dataclass(frozen=True)
class Architecture:
    """``build()``: a fresh model; ``shape``: one input's shape (no batch dim);
    ``classes``: what the labels range over; ``classifier``: the model returns logits
    (batch, classes), so methods that train accept it; ``vocab``: inputs are token ids
    below it (a language model) instead of normal floats."""

    name: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    classes: int = 10
    classifier: bool = True
    vocab: int | None = None

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return self.build().eval()

    def inputs(self, n: int, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        if self.vocab:
            return torch.randint(0, self.vocab, (n, *self.shape), generator=gen)
        return torch.randn(n, *self.shape, generator=gen)

    def labels(self, n: int, seed: int) -> torch.Tensor:
        return torch.randint(0, self.classes, (n,),
                             generator=torch.Generator().manual_seed(seed + 1))

    def example(self) -> torch.Tensor:
        return self.inputs(1, 99)

    def context(self, **overrides) -> Context:
        """Calibration images, three training batches, a labelled pool and a 2-epoch,
        2-step schedule: all a method may need, none of it downloaded."""
        from ..train import TrainConfig
        train = [(self.inputs(8, 10 + i), self.labels(8, 10 + i)) for i in range(3)]
        fields = dict(example=self.example(), calibration=self.inputs(16, 1), train=train,
                      test=train[:1], labelled=(self.inputs(32, 2), self.labels(32, 2)),
                      train_config=TrainConfig(epochs=2, lr=0.01, max_steps_per_epoch=2,
                                               channels_last=False))
        fields.update(overrides)
        return Context(**fields)


# ------------------------------------------------------------------ the CNNs
class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, bn: bool) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.c1, self.n1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn), norm(cout)
        self.c2, self.n2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not bn), norm(cout)
        self.skip = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=not bn), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.n2(self.c2(torch.relu(self.n1(self.c1(x)))))
        return torch.relu(y + self.skip(x))


class SmallResNet(nn.Module):
    """A residual CNN (with or without batch norm): stem, two stages, pooled head."""

    def __init__(self, bn: bool = True, classes: int = 10) -> None:
        super().__init__()
        norm = nn.BatchNorm2d(24) if bn else nn.Identity()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 1, 1, bias=not bn), norm, nn.ReLU())
        self.stages = nn.Sequential(_Block(24, 24, 1, bn), _Block(24, 48, 2, bn))
        self.head = nn.Linear(48, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


class _Inverted(nn.Module):
    """MobileNetV2's inverted residual: expand 1x1, depthwise 3x3, project 1x1."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU6(), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class SmallMobileNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(_Inverted(16, 16, 1), _Inverted(16, 24, 2),
                                    _Inverted(24, 24, 1))
        self.head = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


# ------------------------------------------------------------------ the zoos
def _timm_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                             mlp_ratio=2.0, num_classes=10)


def _timm_convnext() -> nn.Module:
    from timm.models.convnext import ConvNeXt
    return ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), num_classes=10)


def _hf_vit() -> nn.Module:
    import transformers as t
    cfg = t.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, image_size=32, patch_size=8, num_labels=10)
    return t.ViTForImageClassification(cfg)


def _hf_llama() -> nn.Module:
    import transformers as t
    cfg = t.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=64, use_cache=False)
    return t.LlamaForCausalLM(cfg)


def _yolo() -> nn.Module:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.nn.tasks import DetectionModel
    return DetectionModel("yolov8n.yaml", verbose=False)


def _have(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def architectures() -> dict[str, Architecture]:
    """The conformance set by name (the optional families where their package is here)."""
    out = [Architecture("cnn-bn", lambda: SmallResNet(bn=True), (3, 32, 32)),
           Architecture("cnn-no-bn", lambda: SmallResNet(bn=False), (3, 32, 32)),
           Architecture("depthwise", SmallMobileNet, (3, 32, 32))]
    if _have("timm"):
        out += [Architecture("timm-vit", _timm_vit, (3, 32, 32)),
                Architecture("timm-convnext", _timm_convnext, (3, 32, 32))]
    if _have("transformers"):
        out += [Architecture("hf-vit", _hf_vit, (3, 32, 32)),
                Architecture("hf-llama", _hf_llama, (16,), classifier=False, vocab=100)]
    if _have("ultralytics"):
        out.append(Architecture("yolo", _yolo, (3, 64, 64), classifier=False))
    return {a.name: a for a in out}
