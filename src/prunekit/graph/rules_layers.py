"""Rules for layers with weights (conv, linear, norms, embedding) and channel-moving ops."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .builder import Builder, Patch, function_rule, module_rule
from .layout import Block, Layout
from .rules_index import matmul_layout
from .rules_shape import merge_elementwise
from .record import is_computed
from .trace import module_stack


def _input(b: Builder, node: fx.Node) -> Layout | None:
    lay = b.layout(node.args[0]) if node.args else b.layout(next(iter(node.kwargs.values()), None))
    return lay if isinstance(lay, Layout) else None


def _channel_ids(b: Builder, node: fx.Node, lay: Layout, dim: int) -> np.ndarray | None:
    """1-D element ids along ``dim``; a multi-dim block there is frozen (returns None)."""
    blk = lay.block_at(dim)
    if blk is None:
        return None
    if len(blk.dims) != 1:
        b.freeze(blk.ids, f"{b.where(node)} consumes a channel block it cannot follow")
        return None
    return blk.ids


def _others(lay: Layout, dim: int) -> list[Block]:
    return [blk for blk in lay.blocks if dim not in blk.dims]


# ---------------------------------------------------------------------- conv
@module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d)
def conv(b: Builder, node: fx.Node, mod: nn.modules.conv._ConvNd) -> Any:
    lay, out_shape = _input(b, node), b.shape(node)
    if lay is None or out_shape is None or len(lay.shape) != mod.weight.dim():
        return b.unknown(node)
    fqn, g = str(node.target), mod.groups
    cin, cout = mod.in_channels, mod.out_channels
    cin_g, cout_g = cin // g, cout // g
    ids_in = _channel_ids(b, node, lay, 1)
    for blk in _others(lay, 1):
        b.freeze(blk.ids, f"{b.where(node)} convolves over a channel-tracked dim")
    ids_out = b.new(fqn, cout, "conv")
    w_in_dim, w_out_dim = (0, 1) if mod.transposed else (1, 0)
    b.record(f"{fqn}.weight", w_out_dim, ids_out[:cout_g] if mod.transposed else ids_out)
    if mod.bias is not None:
        b.record(f"{fqn}.bias", 0, ids_out)
    whole = g > 1 and cin_g > 1 and not mod.transposed and fqn in b.whole_groups
    if whole:
        _whole_group_couplings(b, node, ids_in, ids_out, g, cin_g, cout_g)
    elif g > 1:
        _group_couplings(b, node, ids_in, ids_out, g, cin_g, cout_g)
        if cin_g > 1 and not mod.transposed:
            b.grouped[fqn] = (ids_in, cin_g, ids_out, cout_g)
    if ids_in is not None and not (g > 1 and cin_g == 1 and not mod.transposed) and not whole:
        b.record(f"{fqn}.weight", w_in_dim, ids_in if mod.transposed else ids_in[:cin_g])
    if mod.transposed and g > 1:
        b.freeze(ids_out, f"{b.where(node)} is a grouped transposed conv")
    b.fix(fqn, "conv")
    # FlopCounterMode: N * prod(spatial) * prod(kernel) * w.shape[0] * w.shape[1]
    spatial = lay.shape[2:] if mod.transposed else out_shape[2:]
    coeff = out_shape[0] * int(np.prod(spatial)) * int(np.prod(mod.kernel_size))
    w0 = ids_in if mod.transposed else ids_out
    w1 = ids_out[:cout_g] if mod.transposed else (ids_in[:cin_g] if ids_in is not None and
                                                   not (g > 1 and cin_g == 1) and not whole
                                                   else None)
    if w0 is None:
        coeff *= mod.weight.shape[0]
    if w1 is None:
        coeff *= mod.weight.shape[1]
    b.macs(coeff, [w0, w1], b.where(node))
    return Layout(out_shape, (Block((1,), ids_out),))


def _group_couplings(b: Builder, node: fx.Node, ids_in: np.ndarray | None, ids_out: np.ndarray,
                     g: int, cin_g: int, cout_g: int) -> None:
    if cin_g == 1:  # depthwise (with multiplier): input c feeds outputs c*m .. c*m+m-1
        if ids_in is None:
            b.freeze(ids_out, f"{b.where(node)} is depthwise over a fixed input")
            return
        for c in range(g):
            for o in range(c * cout_g, (c + 1) * cout_g):
                b.uf.union(int(ids_in[c]), int(ids_out[o]))
        return
    # grouped: the same local index is kept in every group, so groups stay equal
    for arr, per in ((ids_in, cin_g), (ids_out, cout_g)):
        if arr is None:
            continue
        grid = arr.reshape(g, per)
        for col in range(per):
            b.uf.union_all(grid[:, col])


def _whole_group_couplings(b: Builder, node: fx.Node, ids_in: np.ndarray | None,
                           ids_out: np.ndarray, g: int, cin_g: int, cout_g: int) -> None:
    """Grouped conv that loses whole conv groups: group j's input and output channels are
    one unit, the group count and the input width follow the kept ones, every kept group
    keeps its weights whole (used where keeping the same local index in every group
    conflicts with another coupling, e.g. a GroupNorm over contiguous channels)."""
    if ids_in is None:
        b.freeze(ids_out, f"{b.where(node)} is a grouped conv over a fixed input")
        return
    fqn = str(node.target)
    for j in range(g):
        b.uf.union_all(np.concatenate([ids_in[j * cin_g:(j + 1) * cin_g],
                                       ids_out[j * cout_g:(j + 1) * cout_g]]))
    b.follow(fqn, "groups", ids_out, per=cout_g)
    b.follow(fqn, "in_channels", ids_in)


# -------------------------------------------------------------------- linear
def linear_core(b: Builder, node: fx.Node, lay: Layout, fqn_w: str, fqn_b: str | None,
                n_out: int, name: str, transposed: bool = False) -> Layout:
    """A linear map of the last dim; ``transposed``: the weight is (in, out)."""
    out_shape = b.shape(node)
    nd = len(lay.shape)
    ids_in = _channel_ids(b, node, lay, nd - 1)
    ids_out = b.new(name, n_out, "linear")
    b.record(fqn_w, int(transposed), ids_out)
    if ids_in is not None:
        b.record(fqn_w, 1 - int(transposed), ids_in)
    if fqn_b is not None:
        b.record(fqn_b, 0, ids_out)
    coeff = lay.shape[-1] if ids_in is None else 1
    factors = [ids_in, ids_out]
    others = []
    for blk in _others(lay, nd - 1):
        if len(blk.dims) == 1:
            factors.append(blk.ids)
            others.append(blk)
        else:
            b.freeze(blk.ids, f"{b.where(node)} maps a channel block it cannot follow")
    tracked_rows = {blk.dims[0] for blk in others}
    coeff *= int(np.prod([s for d, s in enumerate(out_shape[:-1]) if d not in tracked_rows]))
    b.macs(coeff, factors, b.where(node))
    return Layout(out_shape, tuple(others) + (Block((nd - 1,), ids_out),))


def linear_layer(b: Builder, node: fx.Node, mod: nn.Module, kind: str,
                 transposed: bool = False) -> Any:
    """A layer computing ``x @ W.T + bias`` (or ``x @ W + bias`` when ``transposed``)."""
    lay = _input(b, node)
    if lay is None or b.shape(node) is None:
        return b.unknown(node)
    fqn = str(node.target)
    b.fix(fqn, kind)
    return linear_core(b, node, lay, f"{fqn}.weight", f"{fqn}.bias" if mod.bias is not None
                       else None, mod.weight.shape[int(transposed)], fqn, transposed)


@module_rule(nn.Linear)
def linear(b: Builder, node: fx.Node, mod: nn.Linear) -> Any:
    return linear_layer(b, node, mod, "linear")


def hf_conv1d(b: Builder, node: fx.Node, mod: nn.Module) -> Any:
    """transformers' Conv1D: ``x @ weight + bias`` with weight (nx, nf)."""
    return linear_layer(b, node, mod, "hf_conv1d", transposed=True)


@function_rule(F.linear)
def f_linear(b: Builder, node: fx.Node, _mod: Any) -> Any:
    x = _input(b, node)
    w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    lw = b.layout(w)
    if x is None or not isinstance(lw, Layout) or len(lw.shape) != 2:
        return b.unknown(node)
    wt = Layout((lw.shape[1], lw.shape[0]), tuple(blk.moved({0: 1, 1: 0}) for blk in lw.blocks))
    out = matmul_layout(b, node, x, wt) if len(x.shape) >= 2 else b.unknown(node)
    lbias = b.layout(bias)
    if isinstance(lbias, Layout) and isinstance(out, Layout):
        out = merge_elementwise(b, node, [out, lbias])
    return out


@function_rule(F.embedding)
def f_embedding(b: Builder, node: fx.Node, _mod: Any) -> Any:
    """``F.embedding(ids, weight)``: the output's last dim is the table's dim 1."""
    w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    lw, lidx, out_shape = b.layout(w), b.layout(node.args[0]), b.shape(node)
    if not isinstance(lw, Layout) or out_shape is None or len(lw.shape) != 2:
        return b.unknown(node)
    if isinstance(lidx, Layout) and lidx.blocks:
        b.freeze_layout(lidx, f"{b.where(node)} looks up channels as indices")
    blk0 = lw.block_at(0)
    if blk0 is not None:
        b.freeze(blk0.ids, f"{b.where(node)} indexes the rows of its table")
    ids = lw.ids_1d(1)
    blocks = (Block((len(out_shape) - 1,), ids),) if ids is not None else ()
    return Layout(out_shape, blocks)


@module_rule(nn.Embedding)
def embedding(b: Builder, node: fx.Node, mod: nn.Embedding) -> Any:
    out_shape = b.shape(node)
    if out_shape is None:
        return b.unknown(node)
    fqn = str(node.target)
    ids = b.new(fqn, mod.embedding_dim, "embedding")
    b.record(f"{fqn}.weight", 1, ids)
    b.fix(fqn, "embedding")
    return Layout(out_shape, (Block((len(out_shape) - 1,), ids),))


@module_rule(nn.PReLU)
def prelu(b: Builder, node: fx.Node, mod: nn.PReLU) -> Any:
    lay = _input(b, node)
    if lay is None:
        return b.unknown(node)
    if mod.num_parameters > 1:
        ids = _channel_ids(b, node, lay, 1)
        if ids is None:
            return b.unknown(node)
        b.record(f"{node.target}.weight", 0, ids)
        b.fix(str(node.target), "prelu")
    return merge_elementwise(b, node, [lay])


# ---------------------------------------------------------- spatial (pooling)
def spatial(b: Builder, node: fx.Node, _mod: Any) -> Any:
    """Ops that change only trailing spatial dims: channels pass through."""
    lay = _input(b, node)
    out_shape = b.shape(node)
    if lay is None or out_shape is None or len(out_shape) != len(lay.shape):
        return b.unknown(node)
    blocks = []
    for blk in lay.blocks:
        if any(out_shape[d] != lay.shape[d] for d in blk.dims):
            b.freeze(blk.ids, f"{b.where(node)} resizes a channel-tracked dim")
        else:
            blocks.append(blk)
    return Layout(out_shape, tuple(blocks))


module_rule(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
            nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
            nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool2d,
            nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d,
            nn.ReflectionPad2d, nn.ReplicationPad2d)(spatial)
function_rule(F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
              F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
              F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate, F.upsample,
              F.lp_pool2d)(spatial)


# ------------------------------------------------------------ pad (channels)
@function_rule(F.pad)
def pad(b: Builder, node: fx.Node, _mod: Any) -> Any:
    lay = _input(b, node)
    out_shape = b.shape(node)
    widths = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    if lay is None or out_shape is None or not isinstance(widths, (tuple, list)):
        return b.unknown(node)
    nd = len(lay.shape)
    if not all(isinstance(w, int) and not is_computed(w) for w in widths):
        # computed widths (window padding): fine on dims without channels
        padded = {nd - 1 - k // 2 for k, w in enumerate(widths)
                  if not (isinstance(w, int) and not is_computed(w) and w == 0)}
        if any(padded & set(blk.dims) for blk in lay.blocks):
            return b.unknown(node)
        return spatial(b, node, None) if len(out_shape) == nd else b.unknown(node)
    padded = {nd - 1 - k // 2 for k, w in enumerate(widths) if w != 0}
    blocks = [blk for blk in lay.blocks if not padded & set(blk.dims)]
    hit = [blk for blk in lay.blocks if padded & set(blk.dims)]
    if not hit:
        return Layout(out_shape, tuple(blocks))
    if mode != "constant" or value not in (None, 0, 0.0) or len(hit) > 1 or \
            len(hit[0].dims) != 1:
        b.freeze_layout(lay, f"{b.where(node)} pads channels in a way prunekit cannot follow")
        return spatial(b, node, None)
    dim = hit[0].dims[0]
    k = 2 * (nd - 1 - dim)
    before, after = widths[k], widths[k + 1]
    if before < 0 or after < 0:
        b.freeze(hit[0].ids, f"{b.where(node)} crops channels")
        return spatial(b, node, None)
    zeros_b = b.new(f"{node.name}:zeros_before", before, "pad")
    zeros_a = b.new(f"{node.name}:zeros_after", after, "pad")
    ids = np.concatenate([zeros_b, hit[0].ids, zeros_a])
    stack = module_stack(node)
    owner = stack[-1] if stack else ""
    index = 0
    for n in node.graph.nodes:
        if n is node:
            break
        if n.op == node.op and n.target is node.target and (not owner or owner in module_stack(n)):
            index += 1
    b.patches.append(Patch("pad", node.name, owner, index, node.target, (zeros_b, zeros_a), k))
    blocks.append(Block((dim,), ids))
    return Layout(out_shape, tuple(blocks))


# ------------------------------------------------------ moving channels around
@module_rule(nn.PixelShuffle)
def pixel_shuffle(b: Builder, node: fx.Node, mod: nn.PixelShuffle) -> Any:
    lay, out_shape = _input(b, node), b.shape(node)
    if lay is None or out_shape is None:
        return b.unknown(node)
    ids = _channel_ids(b, node, lay, -3 % len(lay.shape))
    if ids is None:
        return Layout(out_shape, ())  # channels fixed: nothing to follow
    r2 = mod.upscale_factor ** 2
    grid = ids.reshape(-1, r2)
    for row in grid:
        b.uf.union_all(row)
    return Layout(out_shape, (Block((len(out_shape) - 3,), grid[:, 0].copy()),))


@module_rule(nn.PixelUnshuffle)
def pixel_unshuffle(b: Builder, node: fx.Node, mod: nn.PixelUnshuffle) -> Any:
    lay, out_shape = _input(b, node), b.shape(node)
    if lay is None or out_shape is None:
        return b.unknown(node)
    ids = _channel_ids(b, node, lay, -3 % len(lay.shape))
    if ids is None:
        return Layout(out_shape, ())  # channels fixed: nothing to follow
    r2 = mod.downscale_factor ** 2
    return Layout(out_shape, (Block((len(out_shape) - 3,), np.repeat(ids, r2)),))


@module_rule(nn.ChannelShuffle)
def channel_shuffle(b: Builder, node: fx.Node, mod: nn.ChannelShuffle) -> Any:
    lay, out_shape = _input(b, node), b.shape(node)
    if lay is None or out_shape is None:
        return b.unknown(node)
    ids = _channel_ids(b, node, lay, 1)
    if ids is None:
        return Layout(out_shape, tuple(_others(lay, 1)))
    g = mod.groups
    grid = ids.reshape(g, -1)
    for col in range(grid.shape[1]):
        b.uf.union_all(grid[:, col])
    return Layout(out_shape, tuple(_others(lay, 1)) + (Block((1,), grid.T.ravel().copy()),))


function_rule(F.pixel_shuffle)(lambda b, n, m: pixel_shuffle(b, n, nn.PixelShuffle(n.args[1])))
function_rule(F.pixel_unshuffle)(
    lambda b, n, m: pixel_unshuffle(b, n, nn.PixelUnshuffle(n.args[1])))
