"""Faster R-CNN R50-C4 as MoCo's detectron2 configs build it, from torchvision's detection parts.

The network (facebookresearch/moco ``detection/configs/Base-RCNN-C4-BN.yaml`` over detectron2's
``Base-RCNN-C4.yaml`` and defaults): the ResNet's stem and res2-res4 are the backbone, whose
stride-16 res4 map feeds the RPN (one 3x3 conv, 15 anchors per place: sizes 32-512 x ratios
0.5, 1, 2); each proposal is pooled to 14x14 from res4 by RoIAlign with half-pixel alignment
(detectron2's ``ROIAlignV2``), and the ResNet's own res5 (stride 2, so 7x7) plus one extra
BatchNorm (``Res5ROIHeadsExtraNorm``: "an extra BN layer following the res5 stage") and a
spatial mean is the box head; a linear layer scores the classes and regresses one box per
class. Every layer trains (``FREEZE_AT: 0``) and BatchNorm keeps batch statistics
(``NORM: naiveSyncBN``; under several processes :func:`contrastlab.models.globalise_batchnorm`
makes it global). torchvision freezes BatchNorm whenever it builds a detector from weights;
nothing here does.

Settings that detectron2 sets and torchvision's classes take are in :class:`C4Settings`, with
detectron2's values. The losses are detectron2's too (:func:`rpn_losses`, :func:`box_losses`:
L1 box regression, ``SMOOTH_L1_BETA 0``; the RPN's sums divided by the anchors it was to
sample), where torchvision's use smooth L1 with beta 1/9 and divide the RPN's by the anchors it
did sample.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, roi_align

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VOC_TRAIN_SIZES = tuple(range(480, 801, 32))


@dataclass(frozen=True)
class C4Settings:
    """detectron2's values for the C4 detector (``config/defaults.py`` unless noted)."""

    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_train: int = 12000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 6000  # Base-RCNN-C4.yaml
    rpn_post_nms_test: int = 1000  # Base-RCNN-C4.yaml
    rpn_nms: float = 0.7
    rpn_batch: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_iou: tuple[float, float] = (0.3, 0.7)
    roi_batch: int = 512
    roi_positive_fraction: float = 0.25
    roi_iou: float = 0.5
    score_threshold: float = 0.05
    nms: float = 0.5
    detections_per_image: int = 100
    pooler_resolution: int = 14  # Base-RCNN-C4: ROI_BOX_HEAD.POOLER_RESOLUTION
    train_sizes: tuple[int, ...] = VOC_TRAIN_SIZES  # PascalVOC-Detection/faster_rcnn_R_50_C4
    test_size: int = 800
    max_size: int = 1333
    mean: tuple[float, float, float] = IMAGENET_MEAN  # MoCo: PIXEL_MEAN 123.675, ... in RGB
    std: tuple[float, float, float] = IMAGENET_STD  # MoCo: PIXEL_STD 58.395, ...


class AlignedRoIPool(MultiScaleRoIAlign):
    """RoIAlign of the one feature map ``"0"`` with half-pixel alignment (``aligned=True``,
    detectron2's ROIAlignV2), ``sampling_ratio=0`` (adaptive), at ``1 / stride``; torchvision's
    ``MultiScaleRoIAlign`` (whose type FasterRCNN requires) uses the older unaligned form."""

    def __init__(self, resolution: int, stride: int) -> None:
        super().__init__(["0"], resolution, sampling_ratio=0)
        self.resolution, self.scale = resolution, 1.0 / stride

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        return roi_align(
            features["0"],
            proposals,
            self.resolution,
            spatial_scale=self.scale,
            sampling_ratio=0,
            aligned=True,
        )


def rpn_losses(
    objectness: torch.Tensor,
    deltas: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    sampled: torch.Tensor,
    normalizer: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """detectron2's RPN losses over the ``sampled`` anchors (positives: ``labels == 1``):
    ``sum BCE(objectness, label) / normalizer`` and ``sum |deltas - targets|`` over the
    positives ``/ normalizer``, where ``normalizer`` is the anchors per image to sample times
    the images (not the number actually sampled)."""
    positive = sampled[labels[sampled] == 1]
    objectness_loss = F.binary_cross_entropy_with_logits(
        objectness[sampled], labels[sampled], reduction="sum"
    )
    box_loss = F.l1_loss(deltas[positive], targets[positive], reduction="sum")
    return objectness_loss / normalizer, box_loss / normalizer


def box_losses(
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """detectron2's box-head losses over the sampled regions (label 0: background): the mean
    cross-entropy, and ``sum |deltas[label] - targets|`` over the foreground regions (each
    region's deltas for its own class) divided by all sampled regions."""
    classification = F.cross_entropy(class_logits, labels)
    foreground = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(len(labels), -1, 4)[foreground, labels[foreground]]
    regression = F.l1_loss(deltas, targets[foreground], reduction="sum")
    return classification, regression / max(labels.numel(), 1)


class DetectronRPN(RegionProposalNetwork):
    """torchvision's RPN with detectron2's losses (:func:`rpn_losses`)."""

    def compute_loss(
        self,
        objectness: torch.Tensor,
        pred_bbox_deltas: torch.Tensor,
        labels: list[torch.Tensor],
        regression_targets: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positive, negative = self.fg_bg_sampler(labels)
        sampled = torch.where(torch.cat(positive) | torch.cat(negative))[0]
        normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)
        return rpn_losses(
            objectness.flatten(),
            pred_bbox_deltas,
            torch.cat(labels),
            torch.cat(regression_targets),
            sampled,
            normalizer,
        )


class DetectronBoxHeads(RoIHeads):
    """torchvision's box head with detectron2's losses (:func:`box_losses`) in training;
    evaluation is torchvision's (score threshold, per-class NMS, the top detections)."""

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("training needs targets")
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        regions = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(regions)
        classification, regression = box_losses(
            class_logits, box_regression, torch.cat(labels), torch.cat(regression_targets)
        )
        return [], {"loss_classifier": classification, "loss_box_reg": regression}


class Res5Head(nn.Module):
    """The box head: res5 on the pooled regions, an extra BatchNorm (:meth:`features`, which
    the C4 mask head shares), the spatial mean."""

    def __init__(self, res5: nn.Module, channels: int, extra_norm: bool = True) -> None:
        super().__init__()
        self.res5 = res5
        self.norm = nn.BatchNorm2d(channels) if extra_norm else nn.Identity()

    def features(self, regions: torch.Tensor) -> torch.Tensor:
        return self.norm(self.res5(regions))

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        return self.features(regions).mean(dim=(2, 3))


def stage_channels(stage: nn.Module) -> int:
    """The output channels of a torchvision ResNet stage (its last block's last BatchNorm)."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise ValueError("a ResNet stage without BatchNorm: not a torchvision ResNet")
    return norms[-1].num_features


def detectron_predictor(channels: int, num_classes: int) -> FastRCNNPredictor:
    """Class scores (``num_classes`` + background) and per-class box deltas, initialised as
    detectron2's: scores N(0, 0.01), deltas N(0, 0.001), zero biases."""
    predictor = FastRCNNPredictor(channels, num_classes + 1)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)
    return predictor


def detector_options(settings: C4Settings) -> dict:
    """``settings`` as torchvision's ``FasterRCNN`` takes them: sizes, normalisation, the RPN's
    and the box head's sampling, NMS and limits."""
    return {
        "min_size": settings.train_sizes,
        "max_size": settings.max_size,
        "image_mean": list(settings.mean),
        "image_std": list(settings.std),
        "rpn_pre_nms_top_n_train": settings.rpn_pre_nms_train,
        "rpn_pre_nms_top_n_test": settings.rpn_pre_nms_test,
        "rpn_post_nms_top_n_train": settings.rpn_post_nms_train,
        "rpn_post_nms_top_n_test": settings.rpn_post_nms_test,
        "rpn_nms_thresh": settings.rpn_nms,
        "rpn_fg_iou_thresh": settings.rpn_iou[1],
        "rpn_bg_iou_thresh": settings.rpn_iou[0],
        "rpn_batch_size_per_image": settings.rpn_batch,
        "rpn_positive_fraction": settings.rpn_positive_fraction,
        "box_score_thresh": settings.score_threshold,
        "box_nms_thresh": settings.nms,
        "box_detections_per_img": settings.detections_per_image,
        "box_fg_iou_thresh": settings.roi_iou,
        "box_bg_iou_thresh": settings.roi_iou,
        "box_batch_size_per_image": settings.roi_batch,
        "box_positive_fraction": settings.roi_positive_fraction,
    }


def faster_rcnn_c4(
    resnet: nn.Module,
    num_classes: int,
    settings: C4Settings = C4Settings(),
    extra_norm: bool = True,
) -> FasterRCNN:
    """A Faster R-CNN C4 around a torchvision ResNet's weights (copied: ``resnet`` is left
    alone); ``num_classes`` without the background (20 for VOC). The predictor starts as
    detectron2's: class scores N(0, 0.01), box deltas N(0, 0.001), zero biases."""
    if settings.test_size != settings.train_sizes[-1]:
        raise ValueError(
            f"test_size {settings.test_size} must be the last of train_sizes "
            f"{settings.train_sizes}: torchvision's transform tests at that size"
        )
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        if not hasattr(resnet, name):
            raise ValueError(f"faster_rcnn_c4 needs a torchvision ResNet; it has no {name}")
    if resnet.conv1.stride != (2, 2) or isinstance(resnet.maxpool, nn.Identity):
        raise ValueError(
            "faster_rcnn_c4 needs the ImageNet stem (7x7/2 conv and max-pool): res4 must have "
            "stride 16; this ResNet has the CIFAR stem"
        )
    net = copy.deepcopy(resnet)
    trunk = nn.Sequential(
        OrderedDict((n, getattr(net, n)) for n in ("conv1", "bn1", "relu", "maxpool"))
        | OrderedDict((n, getattr(net, n)) for n in ("layer1", "layer2", "layer3"))
    )
    trunk.out_channels = stage_channels(net.layer3)
    res5_channels = stage_channels(net.layer4)
    anchors = AnchorGenerator((settings.anchor_sizes,), (settings.aspect_ratios,))
    model = FasterRCNN(
        trunk,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(trunk.out_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=AlignedRoIPool(settings.pooler_resolution, stride=16),
        box_head=Res5Head(net.layer4, res5_channels, extra_norm),
        box_predictor=detectron_predictor(res5_channels, num_classes),
        **detector_options(settings),
        size_divisible=1,  # a ResNet without FPN pads only to the batch's largest image
    )
    model.rpn.__class__ = DetectronRPN  # the same state and settings, detectron2's losses
    model.roi_heads.__class__ = DetectronBoxHeads
    return model
