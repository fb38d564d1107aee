"""Backbones returning pooled features: torchvision ResNets (CIFAR stem optional) and any timm
model (``timm/<name>``).

Every backbone has the same small interface, which is all the frameworks, the plug-ins and the
evaluations use: ``backbone(x) -> (B, feature_dim)`` pooled features, ``feature_dim``, and
``feature_map(x) -> (B, C, h, w)``, the last spatial map, and ``saliency_map(x) -> (B, 1, h, w)``,
what ContrastiveCrop localises objects on.
``backbone.net`` is the wrapped network, whose ``state_dict`` the exports write.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from contrastlab.models.splitbn import SplitBatchNorm
from contrastlab.options import Note

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
TIMM_PREFIX = "timm/"


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier: ``(B, 3, H, W) -> (B, feature_dim)``.

    ``cifar_stem=True`` swaps the 7x7/2 convolution and max-pool for a 3x3/1 convolution, the
    usual ResNet variant for 32-96 px images. ``bn_splits > 1`` uses :class:`SplitBatchNorm`
    (simulates per-GPU batch statistics on one device). ``zero_init_residual`` starts the last
    BatchNorm's scale of every residual branch at 0 (torchvision's option: each block starts as
    the identity). Submodule names are torchvision's, so exported weights load into
    ``torchvision.models.<arch>`` with ``strict=True`` minus ``fc``.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        cifar_stem: bool = True,
        bn_splits: int = 1,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"unknown backbone {arch!r}; expected one of {ARCHITECTURES} or a timm model "
                f"as '{TIMM_PREFIX}<name>' (e.g. timm/vit_small_patch16_224)"
            )
        norm = (lambda c: SplitBatchNorm(c, bn_splits)) if bn_splits > 1 else nn.BatchNorm2d
        net = getattr(torchvision.models, arch)(
            weights=None, norm_layer=norm, zero_init_residual=zero_init_residual
        )
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional stage's output ``(B, C, h, w)`` (before pooling)."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def saliency_map(self, x: torch.Tensor) -> torch.Tensor:
        """ContrastiveCrop's saliency: the last stage's channel sum ``sum_c F_c``
        ``(B, 1, h, w)`` in float32 (after ReLU, so non-negative)."""
        return self.feature_map(x).float().sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.avgpool(self.feature_map(x)), 1)


class TimmBackbone(nn.Module):
    """Any timm model without its classifier (``num_classes=0``): ``(B, 3, H, W) ->
    (B, feature_dim)``, the model's own pooling (average, class token, ...).

    ``kwargs`` go to ``timm.create_model`` (``img_size``, ``patch_size``, ``drop_path_rate``,
    ``depth``...). Weights are never downloaded: ``weights`` names a local file (safetensors or
    a torch state dict) that timm loads and adapts (classifier dropped, a ViT's position
    embedding resampled to ``img_size``). ``bn_splits > 1`` turns every ``BatchNorm2d`` into a
    :class:`SplitBatchNorm` (models without BatchNorm, such as ViTs, are unchanged).

    :meth:`feature_map` is the last stage's map for convolutional models; for ViT-like models,
    whose features are tokens, it is the patch tokens (prefix tokens dropped) laid out on their
    grid. :meth:`saliency_map` is what ContrastiveCrop localises on: the channel sum for
    convolutional maps (the paper's), and for tokens each patch token's L2 norm. Our extension
    of ContrastiveCrop to ViTs, and experimental: the channel sum of the pre-norm residual
    stream is ``d`` times each token's mean, a signed quantity (41% of an untrained ViT-Tiny's
    map is negative); the norm is non-negative, but that a ViT's boxes find objects is not
    shown (``bench/vit_saliency.py``).
    """

    def __init__(
        self,
        name: str,
        kwargs: dict[str, Any] | None = None,
        bn_splits: int = 1,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        import timm

        self.name = name.removeprefix(TIMM_PREFIX)
        if not timm.is_model(self.name):
            close = timm.list_models(f"*{self.name.split('_')[0]}*")[:8]
            raise ValueError(
                f"timm has no model {self.name!r}"
                + (f"; similar names: {', '.join(close)}" if close else "")
            )
        options: dict[str, Any] = {"num_classes": 0, **(kwargs or {})}
        state = read_backbone_weights(weights) if weights is not None else None
        if state is not None:
            options |= {"pretrained": True, "pretrained_cfg_overlay": {"state_dict": state}}
        self.net = timm.create_model(self.name, **options)
        if state is not None:
            check_weights_cover(self.net, state, weights)
        self.has_batch_norm = any(isinstance(m, nn.BatchNorm2d) for m in self.net.modules())
        if bn_splits > 1:
            split_batch_norms(self.net, bn_splits)
        self.feature_dim = int(getattr(self.net, "head_hidden_size", None) or self.net.num_features)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)``: the last stage's map, or a ViT's patch tokens on their grid.

        timm's ``forward_intermediates`` gives the last block's output before the final norm
        (a LayerNorm's output sums to its bias over channels, which would leave nothing to
        localise); models without it fall back to ``forward_features``."""
        if hasattr(self.net, "forward_intermediates"):
            try:
                last = self.net.forward_intermediates(x, indices=1, intermediates_only=True)
                return last[-1]
            except (NotImplementedError, TypeError):
                pass
        features = self.net.forward_features(x)
        if features.ndim == 4:
            channels = self.net.num_features
            if features.shape[1] != channels and features.shape[-1] == channels:
                features = features.permute(0, 3, 1, 2)  # NHWC models (e.g. Swin)
            return features
        if features.ndim == 3:
            return self._token_grid(features, x.shape[-2:])
        raise ValueError(
            f"timm model {self.name!r} gives features of shape {tuple(features.shape)}; "
            "ContrastiveCrop needs a spatial map (a convolutional stage or patch tokens)"
        )

    @property
    def token_model(self) -> bool:
        """Whether the features are tokens (a ViT-like model) rather than a convolutional map."""
        return getattr(self.net, "patch_embed", None) is not None and hasattr(self.net, "blocks")

    def saliency_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)``: the channel sum of a convolutional map; each patch token's L2 norm
        for token models (experimental: see the class docstring)."""
        grid = self.feature_map(x).float()  # summed in float32, as heatmaps() does
        if self.token_model:
            return grid.norm(dim=1, keepdim=True)
        return grid.sum(dim=1, keepdim=True)

    def _token_grid(self, tokens: torch.Tensor, image_size: torch.Size) -> torch.Tensor:
        patches = tokens[:, getattr(self.net, "num_prefix_tokens", 0) :]
        embed = getattr(self.net, "patch_embed", None)
        if embed is not None and hasattr(embed, "dynamic_feat_size"):
            height, width = embed.dynamic_feat_size(tuple(image_size))
        else:
            height = width = math.isqrt(patches.shape[1])
        if height * width != patches.shape[1]:
            raise ValueError(
                f"timm model {self.name!r}: {patches.shape[1]} tokens do not form a patch grid; "
                "ContrastiveCrop needs a spatial map"
            )
        return patches.transpose(1, 2).reshape(len(patches), -1, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def read_backbone_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A backbone's weights from a local file: a safetensors file or torch state dict (an
    export, timm's or torchvision's weights), or a contrastlab checkpoint (its online backbone,
    ``backbone.net.*``)."""
    from contrastlab.io import load_state

    if not Path(path).is_file():
        raise FileNotFoundError(f"model.backbone_weights: not found: {path}")
    state = load_state(path)
    inner = state.get("state_dict") if isinstance(state, dict) else None
    if isinstance(inner, dict):  # a training checkpoint
        prefix = "backbone.net."
        state = {k.removeprefix(prefix): v for k, v in inner.items() if k.startswith(prefix)}
        state = state or inner
    return state


def check_weights_cover(net: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Every tensor of ``net`` must come from the file (timm loads non-strictly when it drops a
    classifier, which would leave a mismatched file's layers silently random)."""
    missing = [k for k in net.state_dict() if k not in state]
    if missing:
        raise ValueError(
            f"model.backbone_weights: {path} does not hold {len(missing)} of the model's tensors "
            f"(e.g. {', '.join(missing[:4])}): weights of another model or size?"
        )


def split_batch_norms(module: nn.Module, splits: int) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` by a :class:`SplitBatchNorm` with the
    same options and state (parameter names are unchanged, so weights still load)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            split = SplitBatchNorm(
                child.num_features,
                splits,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
            )
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batch_norms(child, splits)
    return module


def set_aside(option: str, reason: str) -> None:
    """Say once that ``option`` does not apply to the chosen backbone and is ignored."""
    warnings.warn(f"{option} set aside: {reason}", Note, stacklevel=3)


def build_backbone(
    name: str,
    cifar_stem: bool = False,
    bn_splits: int = 1,
    kwargs: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    zero_init_residual: bool = False,
) -> ResNetBackbone | TimmBackbone:
    """``timm/<name>`` -> :class:`TimmBackbone`; a torchvision ResNet name ->
    :class:`ResNetBackbone` (``kwargs`` are timm's only; ``weights``: a local state dict of the
    ResNet under torchvision's names, e.g. a ``contrastlab export``)."""
    if name.startswith(TIMM_PREFIX):
        if cifar_stem:
            set_aside(
                "model.cifar_stem",
                f"{name} keeps its own stem (its input size goes in "
                "--model.backbone_kwargs, e.g. img_size and patch_size)",
            )
        if zero_init_residual:
            set_aside(
                "model.zero_init_residual",
                f"{name} is not a torchvision ResNet (its own "
                "option, if it has one, goes in --model.backbone_kwargs)",
            )
        backbone = TimmBackbone(name, kwargs, bn_splits, weights)
        if bn_splits > 1 and not backbone.has_batch_norm:
            set_aside("model.bn_splits", f"{name} has no BatchNorm to split")
        return backbone
    if kwargs:
        raise ValueError(
            f"model.backbone_kwargs are passed to timm models only; {name!r} is a torchvision "
            f"ResNet (use '{TIMM_PREFIX}<name>' for a timm model)"
        )
    backbone = ResNetBackbone(name, cifar_stem, bn_splits, zero_init_residual)
    if weights is not None:
        state = read_backbone_weights(weights)
        check_weights_cover(backbone.net, state, weights)
        backbone.net.load_state_dict(state, strict=True)
    return backbone
