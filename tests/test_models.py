"""Model registry, strict checkpoint loading, option-A facts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from prunekit import ChannelGraph
from prunekit.models import REGISTRY, ModelError, create, load_checkpoint, spec

# The public checkpoints come from $PRUNEKIT_SHARED (CI sets it to the shared folder).
SHARED = os.environ.get("PRUNEKIT_SHARED")
CKPTS = Path(SHARED) / "models" / "resnet-cifar10" if SHARED else Path("/nonexistent")


def test_registry_names_and_unknown():
    for name in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet20b",
                 "vgg16_bn", "vgg19_bn", "mobilenet_v2"):
        assert name in REGISTRY
        m = create(name).eval()
        assert m(torch.randn(2, *spec(name).input_size)).shape == (2, 10)
    with pytest.raises(ModelError, match="unknown model"):
        create("resnet21")


def test_torchvision_by_name():
    pytest.importorskip("torchvision")
    m = create("tv:resnet18")
    assert m.fc.out_features == 1000
    with pytest.raises(ModelError):
        create("tv:nope")


def test_option_a_facts():
    m = create("resnet20")
    assert sum(p.numel() for p in m.parameters()) == 269722
    assert m.layer2[0].shortcut.pad == 8 and m.layer3[0].shortcut.pad == 16
    assert not any("shortcut" in k for k in m.state_dict())
    assert sum(p.numel() for p in create("resnet56").parameters()) == 853018
    assert any("shortcut" in k for k in create("resnet20b").state_dict())


def test_checkpoint_with_dataparallel_prefix(tmp_path):
    src = create("resnet20")
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    torch.save({"best_prec1": 90.0, "state_dict": state}, tmp_path / "c.th")
    dst = create("resnet20")
    load_checkpoint(dst, tmp_path / "c.th")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(),
                                                 dst.state_dict().values()))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(create("resnet20"), tmp_path / "missing.th")
    (tmp_path / "bad.th").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        load_checkpoint(create("resnet20"), tmp_path / "bad.th")
    torch.save(create("resnet32").state_dict(), tmp_path / "r32.pt")
    with pytest.raises(ModelError, match="does not fit"):
        load_checkpoint(create("resnet20"), tmp_path / "r32.pt")


@pytest.mark.skipif(not CKPTS.is_dir(), reason="set PRUNEKIT_SHARED to the shared data folder")
@pytest.mark.parametrize("depth,file", [(20, "resnet20-12fca82f.th"), (32, "resnet32-d509ac18.th"),
                                        (44, "resnet44-014dd654.th"), (56, "resnet56-4bfd9763.th")])
def test_public_checkpoints_load_strictly_and_prune(depth, file):
    m = create(f"resnet{depth}")
    meta = load_checkpoint(m, CKPTS / file)
    assert "best_prec1" in meta
    x = torch.randn(2, 3, 32, 32)
    g = ChannelGraph.build(m.eval(), x)
    assert not g.group("conv1").frozen  # the option-A stream is prunable through the pads
