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
sigmoid and torchvision's ``paste_masks_in_image`` puts it in the image (detectron2 pastes with
``grid_sample``; the two differ by interpolation at the mask's border).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from contrastlab.transfer.detectors import (
    C4Settings,
    DetectronBoxHeads,
    box_losses,
    faster_rcnn_c4,
    stage_channels,
)
from contrastlab.transfer.masks import region_targets

MASK_HEAD_DIM = 256  # ROI_MASK_HEAD.CONV_DIM


class C4MaskHead(nn.Module):
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


class C4MaskHeads(DetectronBoxHeads):
    """The C4 box head (detectron2's losses) and the mask head on the same res5 features."""

    mask_predictor_c4: C4MaskHead

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
        regions = self.box_head.features(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(regions.mean(dim=(2, 3)))
        classification, regression = box_losses(
            class_logits, box_regression, torch.cat(labels), torch.cat(regression_targets)
        )
        foreground = torch.cat(labels) > 0
        logits = self.mask_predictor_c4(regions[foreground])
        size = logits.shape[-1]
        mask_targets = [
            region_targets(target, objects[fg], boxes[fg], size)
            for target, objects, boxes, fg in zip(
                targets, matched, proposals, (lab > 0 for lab in labels), strict=True
            )
        ]
        classes = torch.cat(labels)[foreground] - 1
        masks = mask_loss(logits, classes, torch.cat(mask_targets))
        return [], {
            "loss_classifier": classification,
            "loss_box_reg": regression,
            "loss_mask": masks,
        }

    def detect(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Boxes as the Faster R-CNN, then each detection's mask probabilities ``(n, 1, M, M)``
        for its class from res5 on the detected box."""
        result, _ = DetectronBoxHeads.forward(self, features, proposals, image_shapes)
        boxes = [r["boxes"] for r in result]
        regions = self.box_head.features(self.box_roi_pool(features, boxes, image_shapes))
        logits = self.mask_predictor_c4(regions)
        classes = torch.cat([r["labels"] for r in result]) - 1
        chosen = logits[torch.arange(len(classes), device=logits.device), classes]
        for r, probabilities in zip(
            result, chosen.sigmoid().split([len(b) for b in boxes]), strict=False
        ):
            r["masks"] = probabilities[:, None]
        return result, {}


class PolygonTransform(GeneralizedRCNNTransform):
    """torchvision's resize and normalise, which also scales a target's packed ``polygons``
    (x at even places, y at odd) by the ratios it scales the boxes by."""

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
    model.roi_heads.mask_predictor_c4 = C4MaskHead(channels, num_classes)
    model.transform.__class__ = PolygonTransform
    return model
