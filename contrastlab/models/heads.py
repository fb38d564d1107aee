"""Projection heads."""

from __future__ import annotations

from torch import nn


def mlp_head(
    in_dim: int,
    hidden_dim: int | None,
    out_dim: int,
    batch_norm: bool = False,
    out_bias: bool = True,
) -> nn.Sequential:
    """MoCo v2 / SimCLR projection head:
    ``Linear(in, hidden) [-> BN] -> ReLU -> Linear(hidden, out)``, the last Linear with a bias
    unless ``out_bias`` is false (BYOL's reference); with ``hidden_dim=None`` the linear head
    ``Linear(in, out)`` of MoCo v1 and MoCo's CIFAR-10 demo."""
    if hidden_dim is None:
        return nn.Sequential(nn.Linear(in_dim, out_dim, bias=out_bias))
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim, bias=out_bias)]
    return nn.Sequential(*layers)


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
