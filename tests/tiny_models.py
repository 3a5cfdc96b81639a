"""Tiny models, one per channel-coupling pattern; each runs in milliseconds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models import CifarResNet


def cbr(i: int, o: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o),
                         nn.ReLU())


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(cbr(3, 8), cbr(8, 12, s=2), nn.Conv2d(12, 16, 3, padding=1),
                               nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.f(x), 1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.a, self.b = cbr(8, 6), nn.Conv2d(6, 8, 3, padding=1)
        self.c, self.d = cbr(8, 6), nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b(self.a(x)))
        x = F.relu(self.d(self.c(x)) + x)
        return self.fc(x.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, 6), cbr(3, 5), cbr(11, 7)
        self.fc = nn.Linear(7 + 6, 3)

    def forward(self, x):
        a = self.a(x)
        y = self.c(torch.cat([a, self.b(x)], dim=1))
        return self.fc(torch.cat([y, a], 1).mean((2, 3)))


class SplitSlice(nn.Module):
    """chunk, a strided slice, a fixed-start slice and a fixed-size split."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 12)
        self.a, self.b = cbr(6, 6), cbr(6, 6)
        self.e, self.t = nn.Conv2d(6, 4, 1), nn.Conv2d(8, 4, 1)
        self.z = nn.Conv2d(3, 5, 1)
        self.fc = nn.Linear(4 * 2 + 2, 3)

    def forward(self, x):
        p, q = self.stem(x).chunk(2, dim=1)
        y = torch.cat([self.a(p), self.b(q)], 1)
        ev = self.e(y[:, ::2])
        tail = self.t(y[:, 4:])
        s1, s2 = torch.split(self.z(x), [2, 3], dim=1)
        out = torch.cat([ev.mean((2, 3)), tail.mean((2, 3)), s1.mean((2, 3)) + s2.sum(1).mean((1, 2))[:, None]], 1)
        return self.fc(out)


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.dw = cbr(8, 8, g=8)
        self.dw2 = nn.Conv2d(8, 16, 3, padding=1, groups=8)   # channel multiplier 2
        self.pw = cbr(16, 12, k=1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = self.pw(self.dw2(self.dw(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.g = cbr(16, 24, g=4)
        self.out = nn.Conv2d(24, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        return self.fc(self.out(self.g(x)).mean((2, 3)))


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 12)
        self.g = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.shuffle = nn.ChannelShuffle(2)
        self.out = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.g(self.stem(x))
        b, c, h, w = x.size()
        x = x.view(b, 3, c // 3, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        x = self.shuffle(x)
        return self.fc(self.out(x).mean((2, 3)))


class PixelShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.ps = nn.PixelShuffle(2)
        self.b = nn.Conv2d(4, 8, 3, padding=1)
        self.un = nn.PixelUnshuffle(2)
        self.c = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        y = self.b(self.ps(F.relu(self.a(x))))
        y = F.interpolate(y, scale_factor=0.5, mode="nearest")
        return self.c(self.un(F.interpolate(y, scale_factor=2.0))).mean((2, 3))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 12)
        self.fc1, self.fc2 = nn.Conv2d(12, 4, 1), nn.Conv2d(4, 12, 1)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        x = self.stem(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.out((x * s).mean((2, 3)))


class Tokens(nn.Module):
    """MHA with heads, a positional embedding, layer scale and a token MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.pos = nn.Parameter(torch.randn(1, 5, 16))
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.gamma = nn.Parameter(torch.rand(16) + 0.5)
        self.mlp = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.embed(x) + self.pos
        a, _ = self.attn(x, x, x, need_weights=False)
        x = x + self.gamma * a
        x = x + self.mlp(x)
        return self.head(x.mean(1))


class HandAttention(nn.Module):
    """Attention written by hand: reshape into heads, matmul, softmax, einsum."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = 2
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        att = (q @ k.transpose(-2, -1)).softmax(-1)
        y = torch.einsum("bhij,bhjd->bhid", att, v)
        return self.head(self.proj(y.transpose(1, 2).reshape(b, n, -1)).mean(1))


class Dims(nn.Module):
    """Conv1d, Conv3d, a transposed conv, norms over channels and InstanceNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3, padding=1)
        self.ln = nn.GroupNorm(2, 8)
        self.c2 = nn.Conv1d(8, 6, 1)
        self.inorm = nn.InstanceNorm1d(6, affine=True)
        self.t = nn.ConvTranspose1d(6, 5, 2, stride=2)
        self.c3 = nn.Conv3d(5, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.t(F.relu(self.inorm(self.c2(self.ln(self.c1(x))))))
        y = self.c3(y[:, :, None, :, None])
        return self.fc(y.mean((2, 3, 4)))


class MultiOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(cbr(3, 8), cbr(8, 10))
        self.cls = nn.Linear(10, 3)
        self.emb = nn.Embedding(7, 10)

    def forward(self, x):
        f = self.body(x).mean((2, 3))
        return self.cls(f), f * 0.5


def cifar_a() -> nn.Module:
    return CifarResNet(8, option="A")


def cifar_b() -> nn.Module:
    return CifarResNet(8, option="B")


IMG = (2, 3, 16, 16)
TINY = {
    "chain": (Chain, IMG), "residual": (Residual, IMG), "cifar_option_a": (cifar_a, IMG),
    "cifar_option_b": (cifar_b, IMG), "concat": (Concat, IMG), "split_slice": (SplitSlice, IMG),
    "depthwise": (Depthwise, IMG), "grouped": (Grouped, IMG), "shuffle": (Shuffle, IMG),
    "pixel_shuffle": (PixelShuffleNet, IMG), "squeeze_excite": (SqueezeExcite, IMG),
    "tokens_mha": (Tokens, (2, 5, 6)), "hand_attention": (HandAttention, (2, 5, 8)),
    "dims_1d_3d": (Dims, (2, 3, 8)), "multi_output": (MultiOutput, IMG),
}


def make(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    factory, shape = TINY[name]
    torch.manual_seed(seed)
    model = factory().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model, (torch.randn(*shape),)
