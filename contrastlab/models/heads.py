"""Projection heads."""

from __future__ import annotations

from torch import nn

OUT_BATCH_NORMS = ("none", "full", "scale")
"""What may follow a head's last Linear: nothing, BatchNorm with scale and shift, or BatchNorm
with a scale only (see :func:`mlp_head`)."""


def mlp_head(
    in_dim: int,
    hidden_dim: int | None,
    out_dim: int,
    batch_norm: bool = False,
    out_bias: bool = True,
    out_batch_norm: str = "none",
) -> nn.Sequential:
    """MoCo v2 / SimCLR projection head:
    ``Linear(in, hidden) [-> BN] -> ReLU -> Linear(hidden, out) [-> BN]``, the last Linear with a
    bias unless ``out_bias`` is false (BYOL's reference) or a BatchNorm follows it; with
    ``hidden_dim=None`` the linear head ``Linear(in, out)`` of MoCo v1 and MoCo's CIFAR-10 demo.

    ``out_batch_norm``: ``"full"`` normalises the output with a learnt scale and shift
    (lightly's ``SimCLRProjectionHead`` since 1.4.3), ``"scale"`` with a learnt scale and no
    shift (SimCLR's reference, ``center=False``), ``"none"`` not at all."""
    if out_batch_norm not in OUT_BATCH_NORMS:
        raise ValueError(
            f"out_batch_norm = {out_batch_norm!r}: expected one of {', '.join(OUT_BATCH_NORMS)}"
        )
    normalised = out_batch_norm != "none"
    layers: list[nn.Module] = []
    if hidden_dim is not None:  # built first: a seed gives the same weights as before
        layers.append(nn.Linear(in_dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(hidden_dim or in_dim, out_dim, bias=out_bias and not normalised))
    if normalised:
        layers.append(batch_norm_1d(out_dim, shift=out_batch_norm == "full"))
    return nn.Sequential(*layers)


def batch_norm_1d(features: int, shift: bool = True) -> nn.BatchNorm1d:
    """``BatchNorm1d`` with a learnt scale, and a learnt shift unless ``shift`` is false (then
    no ``bias`` parameter exists: ``y = (x - mean) / sqrt(var + eps) * weight``)."""
    norm = nn.BatchNorm1d(features)
    if not shift:
        norm.bias = None  # F.batch_norm takes bias=None; nothing to decay or synchronise
    return norm


def simsiam_projector(
    in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, out_affine: bool = False
) -> nn.Sequential:
    """SimSiam's projector: ``layers - 1`` blocks ``Linear(no bias) -> BN -> ReLU`` of width
    ``hidden``, then ``Linear(hidden, out, no bias) -> BN(affine=out_affine)``. Two layers is
    the common CIFAR variant; three is the paper's (and the ContrastiveCrop authors', whose last
    Linear keeps a frozen bias that the affine-free BN removes: no bias is the same network).
    The paper's output BN has no affine; lightly's CIFAR-10 benchmark learns one."""
    if layers not in (2, 3):
        raise ValueError(f"model.proj_layers = {layers}: expected 2 or 3")
    blocks: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(width, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim)]
        blocks.append(nn.ReLU(inplace=True))
        width = hidden_dim
    blocks += [nn.Linear(width, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=out_affine)]
    return nn.Sequential(*blocks)
