"""ContrastiveCrop: localisation, center-suppressed sampling, the box store and its schedule."""

import pytest
import torch

from contrastlab.views import (
    ContrastiveCrop,
    SimCCrop,
    ViewSampler,
    boxes_from_heatmaps,
    center_suppressed_boxes,
    heatmaps,
    localize_boxes,
    random_resized_boxes,
)
from contrastlab.views.crops import crop_sizes


def blob_maps(rows: slice, cols: slice, size: int = 8, channels: int = 4) -> torch.Tensor:
    maps = torch.zeros(1, channels, size, size)
    maps[0, :, rows, cols] = 1.0
    return maps


def test_known_blob_without_upsampling_gives_its_box():
    # heatmap at image resolution: the box is the blob itself
    box = localize_boxes(blob_maps(slice(2, 5), slice(5, 7)), (8, 8), threshold=0.1)
    assert torch.allclose(box, torch.tensor([[2 / 8, 5 / 8, 5 / 8, 7 / 8]]))


def test_known_blob_upsampled_gives_hand_computed_box():
    # 8 -> 32 bilinear (align_corners=False): source row s = (y + 0.5) / 4 - 0.5. Rows 2..4 hold
    # 1, so the value ramps s - 1 above row 2 and 5 - s below row 4; >= 0.1 for s in [1.1, 4.9],
    # i.e. y in [5.9, 21.1] -> rows 6..21. Columns 5..6: s in [4.1, 6.9] -> x in [17.9, 29.1].
    box = localize_boxes(blob_maps(slice(2, 5), slice(5, 7)), (32, 32), threshold=0.1)
    assert torch.allclose(box, torch.tensor([[6 / 32, 18 / 32, 22 / 32, 30 / 32]]))


def test_heatmap_sums_channels_and_normalises_per_image():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 5, 4, 4, generator=generator)
    shifted = maps * 7.0 - 3.0  # min-max normalisation removes any affine change
    assert torch.allclose(heatmaps(maps, (4, 4)), heatmaps(shifted, (4, 4)), atol=1e-5)
    summed = maps.sum(1)
    low = summed.amin(dim=(1, 2), keepdim=True)
    expected = (summed - low) / (summed.amax(dim=(1, 2), keepdim=True) - low)
    assert torch.allclose(heatmaps(maps, (4, 4)), expected, atol=1e-6)


def test_threshold_zero_constant_map_and_empty_mask_give_the_whole_image():
    generator = torch.Generator().manual_seed(1)
    maps = torch.rand(6, 3, 4, 4, generator=generator)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(6, 4)
    assert torch.equal(localize_boxes(maps, (16, 12), threshold=0.0), whole)
    assert torch.equal(localize_boxes(torch.ones(6, 3, 4, 4), (16, 12)), whole)
    assert torch.equal(boxes_from_heatmaps(torch.zeros(6, 16, 12), threshold=0.5), whole)


def test_a_one_by_one_feature_map_warns_and_keeps_the_whole_image():
    with pytest.warns(UserWarning, match="too small to localise"):
        boxes = localize_boxes(torch.rand(3, 8, 1, 1), (32, 32))
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(3, 4))


def crop_centres(crops: torch.Tensor) -> torch.Tensor:
    return crops[:, :2].double() + crops[:, 2:].double() / 2


def test_crops_lie_inside_the_image_and_centres_inside_the_clamped_box():
    generator = torch.Generator().manual_seed(2)
    height, width = 40, 30
    n = 4000
    corner = torch.rand(n, 2, generator=generator) * 0.8
    extent = 0.05 + torch.rand(n, 2, generator=generator) * (1 - corner - 0.05)
    boxes = torch.cat([corner, (corner + extent).clamp(max=1.0)], dim=1)
    crops = center_suppressed_boxes(boxes, (height, width), alpha=0.3, generator=generator)
    top, left, h, w = crops.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    size = torch.tensor([height, width], dtype=torch.float64)
    near, far = boxes[:, :2].double() * size, boxes[:, 2:].double() * size
    centre = crop_centres(crops)
    # the crop's centre is in the box, unless the box would push the crop out of the image
    start, last = crops[:, :2].double(), size - crops[:, 2:].double()
    inside = (centre >= near - 1e-9) & (centre <= far + 1e-9)
    clamped_low = (start == 0) & (near - crops[:, 2:].double() / 2 < 0)
    clamped_high = (start == last) & (far - crops[:, 2:].double() / 2 > last)
    assert (inside | clamped_low | clamped_high).all()
    assert inside.double().mean() > 0.5  # most are not clamped at all


def placement(alpha: float, n: int = 20000) -> torch.Tensor:
    """``u = (start - lo) / (hi - lo)`` for a fixed 100 px crop in a 1000 px image, box 0.3-0.7."""
    generator = torch.Generator().manual_seed(3)
    boxes = torch.tensor([[0.3, 0.3, 0.7, 0.7]]).expand(n, 4)
    crops = center_suppressed_boxes(
        boxes, (1000, 1000), scale=(0.01, 0.01), ratio=(1.0, 1.0), alpha=alpha, generator=generator
    )
    assert (crops[:, 2:] == 100).all()
    lo, hi = 300 - 50, 700 - 50 + 1  # starts that put the centre in [300, 700]
    return (crops[:, :2].double() - lo) / (hi - lo)


def test_small_alpha_piles_centres_near_the_box_edges():
    u = placement(alpha=0.1)
    near_edges = ((u < 0.1) | (u >= 0.9)).double().mean()
    # Beta(0.1, 0.1) puts about 80% of its mass within 0.1 of either end; uniform puts 20%
    assert near_edges > 0.7
    assert ((u >= 0.4) & (u < 0.6)).double().mean() < 0.05


def test_alpha_one_spreads_centres_uniformly():
    u = placement(alpha=1.0)
    deciles = torch.histc(u.flatten().float(), bins=10, min=0.0, max=1.0) / u.numel()
    assert torch.allclose(deciles, torch.full((10,), 0.1, dtype=deciles.dtype), atol=0.01)


def test_whole_image_box_with_alpha_one_is_random_resized_crop():
    n, size = 30000, (12, 10)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(n, 4)
    ours = center_suppressed_boxes(
        whole, size, alpha=1.0, generator=torch.Generator().manual_seed(4)
    )
    rrc = random_resized_boxes(
        n, size, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(4)
    )
    assert torch.equal(ours[:, 2:], rrc[:, 2:])  # sizes: the same draws
    for axis, extent in ((0, 12), (1, 10)):
        a = torch.bincount(ours[:, axis], minlength=extent).double() / n
        b = torch.bincount(rrc[:, axis], minlength=extent).double() / n
        assert (a - b).abs().max() < 0.012, (axis, a, b)
        # the start is uniform over the positions where the crop fits, given its size
        room = extent - ours[:, 2 + axis] + 1
        assert (ours[:, axis] < room).all()
        movable = room > 1
        spread = ours[movable, axis].double() / (room[movable] - 1)
        assert abs(spread.mean() - 0.5) < 0.01


def test_schedule_warmup_then_every_interval():
    crop = ContrastiveCrop(warmup_epochs=100, interval=100)
    due = [e for e in range(500) if crop.localization_due(e)]
    assert due == [100, 200, 300, 400]
    assert not SimCCrop().localization_due(0)


def test_store_is_read_where_crops_are_sampled_and_updates_are_seen_at_once():
    crop = ContrastiveCrop(alpha=0.5, warmup_epochs=1)
    crop.reset(10)
    generator = torch.Generator().manual_seed(5)
    indices = torch.tensor([3] * 500)
    crop.start_if_due(0)
    assert not bool(crop.active)  # still warm-up: RandomResizedCrop
    crop.start_if_due(1)
    crop.update(torch.tensor([3]), torch.tensor([[0.0, 0.0, 0.25, 0.25]]))
    crops = crop(indices, (64, 64), generator)
    centre = crop_centres(crops)
    clamped = crops[:, :2] == 0
    assert ((centre <= 16 + 1e-9) | clamped).all()
    crop.update(torch.tensor([3]), torch.tensor([[0.75, 0.75, 1.0, 1.0]]))
    crops = crop(indices, (64, 64), generator)  # the very next call sees the new box
    last = 64 - crops[:, 2:]
    assert ((crop_centres(crops) >= 48 - 1e-9) | (crops[:, :2] == last)).all()


def test_views_draw_both_crops_from_the_same_box_independently():
    crop = SimCCrop(alpha=1.0, box=(0.5, 0.5, 1.0, 1.0))
    crop.reset(4)
    crop.start_if_due(0)
    seen = []
    sampler = ViewSampler(box_sampler=lambda *a: seen.append(crop(*a)) or seen[-1], seed=0)
    sampler(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.arange(4))
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])
    for crops in seen:
        assert ((crop_centres(crops) >= 16 - 1e-9) | (crops[:, :2] == 32 - crops[:, 2:])).all()


def test_store_survives_a_state_dict_round_trip_of_another_size():
    crop = ContrastiveCrop()
    crop.reset(7)
    crop.update(torch.tensor([2]), torch.tensor([[0.1, 0.2, 0.6, 0.9]]))
    crop.start_if_due(200)
    fresh = ContrastiveCrop()
    fresh.load_state_dict(crop.state_dict())
    assert torch.equal(fresh.boxes, crop.boxes) and bool(fresh.active)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"interval": 0},
        {"fixed_box": (0.5, 0.0, 0.4, 1.0)},
        {"fixed_box": (0, 0, 1, 1.5)},
    ],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        ContrastiveCrop(**kwargs)


def test_beta_placement_matches_beta_mean_and_variance():
    # Var Beta(a, a) = 1 / (4 (2a + 1)): a wrong sampler (e.g. uniform) fails this
    u = placement(alpha=0.3).flatten()
    assert abs(u.mean().item() - 0.5) < 0.01
    assert abs(u.var().item() - 1 / (4 * (2 * 0.3 + 1))) < 0.01


def test_fallback_crop_is_centred_in_the_image_as_torchvision():
    """On a 60x400 panorama most draws fit no attempt; the fallback (60 x 80) is centred."""
    n, size = 2000, (60, 400)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(n, 4)
    ours = center_suppressed_boxes(
        whole, size, alpha=1.0, generator=torch.Generator().manual_seed(1)
    )
    # the same generator state draws the same sizes first: which rows took the fallback
    _, fallback = crop_sizes(n, size, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    assert fallback.double().mean() > 0.3
    assert (ours[fallback] == torch.tensor([0, 160, 60, 80])).all()
    assert (ours[~fallback, 1] != 160).any()  # the others move
