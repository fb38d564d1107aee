"""Mask R-CNN R50-C4 as MoCo's and SynCo's COCO configs build it (``coco_R_50_C4_2x.yaml``,
``MASK_ON: True``, over ``Base-RCNN-C4-BN.yaml``), on :func:`faster_rcnn_c4`.

detectron2's ``Res5ROIHeads`` runs res5 (and the extra BatchNorm) once per sampled region and
feeds both heads from it: the box head takes the spatial mean, the mask head the ``7 x 7``
features of the foreground regions (``MaskRCNNConvUpsampleHead`` with ``NUM_CONV 0``: a 2x2
stride-2 transposed convolution to 256 channels, ReLU, a 1x1 convolution to one ``14 x 14``
mask per class). Running res5 again for the mask regions, as torchvision's ``RoIHeads`` would,
changes training: res5's BatchNorm would see the foreground regions alone. So
:class:`C4MaskHeads` shares the features as detectron2 does.

The mask loss is detectron2's ``mask_rcnn_loss``: the mean binary cross-entropy of each
foreground region's mask of its object's class against the object's mask cut to the region
(:func:`contrastlab.transfer.masks.region_targets`); zero when a batch has no foreground.
At test time res5 runs on the detected boxes, the mask of the detected class goes through a
sigmoid and :func:`~contrastlab.transfer.masks.paste_masks` puts it in the image as detectron2
does (:class:`MaskTransform`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _setup_scales

from contrastlab.transfer.detectors import (
    C4Settings,
    DetectronBoxHeads,
    DetectronRPN,
    box_losses,
    detector_options,
    detectron_predictor,
    faster_rcnn_c4,
    stage_channels,
)
from contrastlab.transfer.masks import paste_masks, region_targets

MASK_HEAD_DIM = 256  # ROI_MASK_HEAD.CONV_DIM


class UpsampleMaskHead(nn.Module):
    """detectron2's ``MaskRCNNConvUpsampleHead`` without convolutions: ``(R, C, 7, 7)`` res5
    features to ``(R, classes, 14, 14)`` mask logits. Initialised as detectron2's: the
    transposed convolution He-normal (fan-out, ReLU), the predictor N(0, 0.001), zero biases."""

    def __init__(self, in_channels: int, num_classes: int, dim: int = MASK_HEAD_DIM) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, dim, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(dim, num_classes, kernel_size=1)
        nn.init.kaiming_normal_(self.upsample.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.upsample.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.predictor(F.relu(self.upsample(features)))


def mask_loss(logits: torch.Tensor, classes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean BCE(logits[r, classes[r]], targets[r])`` over the regions ``r`` and the mask's
    pixels (``classes`` 0-based); ``0 * sum(logits)`` when there is no region."""
    if len(classes) == 0:
        return logits.sum() * 0
    chosen = logits[torch.arange(len(classes), device=logits.device), classes]
    return F.binary_cross_entropy_with_logits(chosen, targets.to(chosen.dtype))


class MaskHeads(DetectronBoxHeads):
    """A box head with detectron2's losses and a mask head: in training the foreground
    regions' masks are scored by :func:`mask_loss` against their objects' masks cut to the
    regions (:func:`~contrastlab.transfer.masks.region_targets`); at test time each detection
    gets the mask probabilities of its class, ``(n, 1, M, M)``. Subclasses say where the
    box head's and the mask head's features come from."""

    def box_features(self, pooled: torch.Tensor) -> torch.Tensor:
        """What the box head makes of the pooled regions (shared with the mask head in C4)."""
        raise NotImplementedError

    def box_vector(self, features: torch.Tensor) -> torch.Tensor:
        """The box predictor's input from :meth:`box_features`."""
        raise NotImplementedError

    def mask_logits(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        shared: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(R, classes, M, M)`` mask logits for ``boxes``; ``shared``: the box head's features
        of the same regions when the training step has them."""
        raise NotImplementedError

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if not self.training:
            return self.detect(features, proposals, image_shapes)
        if targets is None:
            raise ValueError("training needs targets")
        proposals, matched, labels, regression_targets = self.select_training_samples(
            proposals, targets
        )
        shared = self.box_features(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(self.box_vector(shared))
        classification, regression = box_losses(
            class_logits, box_regression, torch.cat(labels), torch.cat(regression_targets)
        )
        foreground = [lab > 0 for lab in labels]
        fg_boxes = [boxes[fg] for boxes, fg in zip(proposals, foreground, strict=True)]
        logits = self.mask_logits(features, fg_boxes, image_shapes, shared[torch.cat(foreground)])
        size = logits.shape[-1]
        mask_targets = [
            region_targets(target, objects[fg], boxes, size)
            for target, objects, fg, boxes in zip(
                targets, matched, foreground, fg_boxes, strict=True
            )
        ]
        classes = torch.cat([lab[fg] for lab, fg in zip(labels, foreground, strict=True)]) - 1
        return [], {
            "loss_classifier": classification,
            "loss_box_reg": regression,
            "loss_mask": mask_loss(logits, classes, torch.cat(mask_targets)),
        }

    def detect(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Boxes as the Faster R-CNN, then each detection's mask of its class."""
        result, _ = DetectronBoxHeads.forward(self, features, proposals, image_shapes)
        boxes = [r["boxes"] for r in result]
        logits = self.mask_logits(features, boxes, image_shapes)
        classes = torch.cat([r["labels"] for r in result]) - 1
        chosen = logits[torch.arange(len(classes), device=logits.device), classes]
        for r, probabilities in zip(
            result, chosen.sigmoid().split([len(b) for b in boxes]), strict=True
        ):
            r["masks"] = probabilities[:, None]
        return result, {}


class C4MaskHeads(MaskHeads):
    """C4: res5 and its extra BatchNorm run once per training region for both heads; the box
    head takes their spatial mean, the mask head the foreground regions' ``7 x 7`` maps. At
    test time res5 runs again on the detected boxes."""

    mask_predictor_c4: UpsampleMaskHead

    def box_features(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.box_head.features(pooled)

    def box_vector(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))

    def mask_logits(self, features, boxes, image_shapes, shared=None) -> torch.Tensor:
        if shared is None:
            shared = self.box_head.features(self.box_roi_pool(features, boxes, image_shapes))
        return self.mask_predictor_c4(shared)


class MaskTransform(GeneralizedRCNNTransform):
    """torchvision's resize and normalise, which also scales a target's packed ``polygons``
    (x at even places, y at odd) by the ratios it scales the boxes by; at test time the
    detections' masks go into the original image by detectron2's paste
    (:func:`~contrastlab.transfer.masks.paste_masks`), not torchvision's."""

    def resize(self, image, target=None):
        height, width = image.shape[-2:]
        image, target = super().resize(image, target)
        if target is not None and "polygons" in target:
            ratio_y = image.shape[-2] / height
            ratio_x = image.shape[-1] / width
            scaled = target["polygons"].clone()
            scaled[0::2] *= ratio_x
            scaled[1::2] *= ratio_y
            target["polygons"] = scaled
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        masks = [found.pop("masks", None) for found in result]
        result = super().postprocess(result, image_shapes, original_image_sizes)
        for found, mask, size in zip(result, masks, original_image_sizes, strict=True):
            if mask is not None:
                found["masks"] = paste_masks(mask, found["boxes"], size)
        return result


def mask_rcnn_c4(
    resnet: nn.Module,
    num_classes: int,
    settings: C4Settings = C4Settings(),
    extra_norm: bool = True,
) -> FasterRCNN:
    """:func:`faster_rcnn_c4` with the C4 mask head (``num_classes`` masks of ``14 x 14``) on
    the box head's res5 features; targets carry ``masks`` (full-image, when an object is an
    RLE) or packed ``polygons`` (:func:`contrastlab.transfer.masks.pack_polygons`)."""
    model = faster_rcnn_c4(resnet, num_classes, settings, extra_norm)
    channels = stage_channels(model.roi_heads.box_head.res5)
    model.roi_heads.__class__ = C4MaskHeads
    model.roi_heads.mask_predictor_c4 = UpsampleMaskHead(channels, num_classes)
    model.transform.__class__ = MaskTransform
    return model


# --------------------------------------------------------------------------- R50-FPN


@dataclass(frozen=True)
class FpnSettings(C4Settings):
    """detectron2's ``Base-RCNN-FPN.yaml`` where it differs from the C4 detector: one anchor
    size per level (P2-P6), 2,000 proposals per level before NMS in training and 1,000 at test,
    1,000 per image after; boxes pooled to 7x7 and masks to 14x14 from P2-P5; images padded to
    multiples of 32; the COCO training sizes 640-800."""

    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 1000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    pooler_resolution: int = 7
    mask_pooler_resolution: int = 14
    train_sizes: tuple[int, ...] = tuple(range(640, 801, 32))
    size_divisibility: int = 32


class AlignedLevelRoIAlign(MultiScaleRoIAlign):
    """RoIAlign over feature levels, each region from level ``floor(4 + log2(sqrt(wh) /
    224))`` clamped to the levels given (torchvision's and detectron2's mapping), with
    detectron2's half-pixel alignment (``ROIAlignV2``), which torchvision's pooler lacks."""

    def forward(
        self,
        x: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        maps = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                maps, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
        )
        levels = self.map_levels(boxes)
        result = maps[0].new_zeros((len(rois), maps[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(maps, self.scales, strict=True)):
            chosen = torch.where(levels == level)[0]
            result[chosen] = roi_align(
                feature, rois[chosen], self.output_size, scale, sampling_ratio=0, aligned=True
            ).to(result.dtype)
        return result


class FpnMaskHeads(MaskHeads):
    """FPN: the box head (4 convolutions and a fully connected layer, BatchNorm after each
    convolution) on 7x7 regions; the mask head (4 convolutions with BatchNorm, then the
    upsampling head) on its own 14x14 regions of the foreground (training) or the detections
    (test), so 28x28 masks."""

    mask_pool_fpn: AlignedLevelRoIAlign
    mask_head_fpn: nn.Module

    def box_features(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.box_head(pooled)

    def box_vector(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def mask_logits(self, features, boxes, image_shapes, shared=None) -> torch.Tensor:
        return self.mask_head_fpn(self.mask_pool_fpn(features, boxes, image_shapes))


def xavier_fill(layer: nn.Module) -> None:
    """detectron2's ``c2_xavier_fill``: weights U(+-sqrt(3 / fan_in)), zero bias."""
    nn.init.kaiming_uniform_(layer.weight, a=1)
    nn.init.zeros_(layer.bias)


def mask_rcnn_fpn(
    resnet: nn.Module, num_classes: int, settings: FpnSettings = FpnSettings()
) -> FasterRCNN:
    """Mask R-CNN R50-FPN with BatchNorm in the backbone, the FPN and both heads (detectron2's
    ``mask_rcnn_R_50_FPN_3x_syncbn.yaml`` layers, which global BatchNorm makes SyncBN), around a
    copy of a torchvision ResNet, every layer training. Initialised as detectron2's: FPN and
    fully connected layers ``c2_xavier_fill``, convolutions He-normal (fan-out), RPN
    N(0, 0.01), class scores N(0, 0.01), box deltas N(0, 0.001), mask predictor N(0, 0.001)."""
    if settings.test_size != settings.train_sizes[-1]:
        raise ValueError(f"test_size {settings.test_size} must be the last of train_sizes")
    backbone = _resnet_fpn_extractor(copy.deepcopy(resnet), 5, norm_layer=nn.BatchNorm2d)
    for module in backbone.fpn.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_uniform_(module.weight, a=1)  # no bias: BatchNorm follows
    anchors = AnchorGenerator(
        tuple((size,) for size in settings.anchor_sizes),
        (settings.aspect_ratios,) * len(settings.anchor_sizes),
    )
    channels = backbone.out_channels
    levels = ["0", "1", "2", "3"]
    box_head = FastRCNNConvFCHead(
        (channels, settings.pooler_resolution, settings.pooler_resolution),
        [256] * 4,
        [1024],
        norm_layer=nn.BatchNorm2d,
    )
    xavier_fill(box_head[-2])
    model = FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=AlignedLevelRoIAlign(levels, settings.pooler_resolution, 0),
        box_head=box_head,
        box_predictor=detectron_predictor(1024, num_classes),
        **detector_options(settings),
        size_divisible=settings.size_divisibility,
    )
    model.rpn.__class__ = DetectronRPN
    model.roi_heads.__class__ = FpnMaskHeads
    model.roi_heads.mask_pool_fpn = AlignedLevelRoIAlign(levels, settings.mask_pooler_resolution, 0)
    model.roi_heads.mask_head_fpn = nn.Sequential(
        MaskRCNNHeads(channels, [256] * 4, 1, norm_layer=nn.BatchNorm2d),
        UpsampleMaskHead(256, num_classes),
    )
    model.transform.__class__ = MaskTransform
    return model
