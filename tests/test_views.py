import math

import pytest
import torch
from torch.nn import functional as F
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from contrastlab.views import Augment, ViewSampler, crop_and_resize, random_resized_boxes
from contrastlab.views.augment import color_jitter, sample_parameters


def test_whole_image_crop_equals_bilinear_resize():
    images = torch.rand(2, 3, 10, 10)
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]])
    out = crop_and_resize(images, boxes, 17)
    expected = F.interpolate(images, size=(17, 17), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_crop_of_a_ramp_lands_where_geometry_says():
    # pixel (y, x) holds x: an upscaled crop of width w at left must read
    # left + (o + 0.5) * w / size - 0.5 at output column o (bilinear, centres at half-pixels)
    width = 40
    ramp = torch.arange(width, dtype=torch.float32).expand(1, 3, 30, width).clone()
    top, left, h, w, size = 5, 12, 8, 10, 20
    out = crop_and_resize(ramp, torch.tensor([[top, left, h, w]]), size)
    expected = left + (torch.arange(size) + 0.5) * w / size - 0.5
    torch.testing.assert_close(out[0, 0, 3], expected, atol=1e-4, rtol=0)


def test_crops_equal_torchvisions_antialiased_crop_then_resize():
    """Integer boxes, some upscaled, some downscaled 1.3x to 9x, one crossing the image's edge
    pixels: each crop equals torchvision's ``resize(crop(image, box), antialias=True)``."""
    image = torch.rand(1, 3, 90, 120, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor(
        [[0, 0, 90, 120], [10, 7, 20, 26], [31, 40, 59, 80], [5, 50, 9, 11], [0, 1, 88, 119]]
    )
    size = 13
    out = crop_and_resize(image.expand(len(boxes), -1, -1, -1), boxes, size)
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        expected = TF.resize(TF.crop(image, top, left, h, w), [size, size], antialias=True)
        torch.testing.assert_close(out[k : k + 1], expected, atol=2e-5, rtol=0)


def test_a_downscaled_ramp_reads_the_box_centres_at_fractional_boxes():
    """A symmetric filter keeps a linear image linear: away from the box's edges, output ``i`` of
    a fractional box holds ``start + (i + 0.5) * length / size - 0.5``, up to the triangle's
    sampling on the pixel grid (a hundredth of a pixel here; a box misplaced by a quarter of a
    pixel or scaled by a pixel fails)."""
    width = 200
    ramp = torch.arange(width, dtype=torch.float64).expand(1, 1, 8, width).clone()
    start, length, size = 23.25, 131.5, 17  # 7.7x down
    out = crop_and_resize(ramp, torch.tensor([[0.0, start, 8.0, length]]), size)
    expected = start + (torch.arange(size, dtype=torch.float64) + 0.5) * length / size - 0.5
    torch.testing.assert_close(out[0, 0, 3, 1:-1], expected[1:-1], atol=0.02, rtol=0)


def sinusoid_residual(crop) -> float:
    """A 500-px sinusoid at 0.35 cycles/px, above the Nyquist rate of a 224-px output: an
    ideal resize leaves its mean, so the output's spread is the aliasing let through."""
    x = torch.arange(500, dtype=torch.float32)
    image = (0.5 + 0.5 * torch.sin(2 * math.pi * 0.35 * x)).expand(1, 1, 500, 500).clone()
    return float(crop(image).std())


def test_downscaled_crops_alias_no_more_than_torchvision():
    """roi_align's average of ``ceil(box / size)`` samples lets 2.5x torchvision's aliasing
    through; the anti-aliased crop matches torchvision's."""
    box = torch.tensor([[0, 0, 500, 500]])
    ours = sinusoid_residual(lambda image: crop_and_resize(image, box, 224))
    fast = sinusoid_residual(lambda image: crop_and_resize(image, box, 224, antialias=False))
    reference = sinusoid_residual(lambda image: TF.resize(image, [224, 224], antialias=True))
    assert abs(ours - reference) < 1e-4 * reference + 1e-6, (ours, reference)
    assert fast > 2 * reference, (fast, reference)


def torchvision_boxes(n: int, size: tuple[int, int]) -> torch.Tensor:
    """``n`` boxes ``(top, left, height, width)`` from torchvision's RandomResizedCrop (seed 0)."""
    torch.manual_seed(0)
    image = torch.zeros(1, *size)
    return torch.tensor(
        [RandomResizedCrop.get_params(image, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
        dtype=torch.float64,
    )


def test_random_resized_boxes_inside_image_and_match_torchvision_distribution():
    g = torch.Generator().manual_seed(0)
    n, size = 4000, (24, 40)
    boxes = random_resized_boxes(n, size, (0.2, 1.0), (3 / 4, 4 / 3), g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= size[0]).all() and (left + w <= size[1]).all() and (h > 0).all()
    reference = torchvision_boxes(n, size)
    ours = boxes.double()
    # same distribution: compare means and spreads of every coordinate (4000 draws)
    for column in range(4):
        a, b = ours[:, column], reference[:, column]
        scale = b.std() / math.sqrt(n) * 4 + 1e-9
        assert abs(a.mean() - b.mean()) < scale * 1.5
        assert abs(a.std() - b.std()) / b.std() < 0.1


def test_colour_jitter_matches_torchvision_per_image():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    params = {
        "jitter": torch.tensor([True, True, True, False]),
        "brightness": torch.tensor([0.7, 1.3, 1.0, 1.2]),
        "contrast": torch.tensor([1.2, 0.8, 1.0, 0.6]),
        "saturation": torch.tensor([0.6, 1.4, 1.1, 1.0]),
        "hue": torch.tensor([0.05, -0.1, 0.02, 0.1]),
        "order": torch.tensor([2, 0, 3, 1]),
    }
    out = color_jitter(images, params)
    fns = [
        lambda x, i: TF.adjust_brightness(x, params["brightness"][i].item()),
        lambda x, i: TF.adjust_contrast(x, params["contrast"][i].item()),
        lambda x, i: TF.adjust_saturation(x, params["saturation"][i].item()),
        lambda x, i: TF.adjust_hue(x, params["hue"][i].item()),
    ]
    for i in range(4):
        expected = images[i]
        if params["jitter"][i]:
            for op in params["order"].tolist():
                expected = fns[op](expected, i)
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)


def test_parameter_ranges_and_probabilities():
    g = torch.Generator().manual_seed(1)
    aug = Augment(brightness=0.4, hue=0.1, grayscale_prob=0.2, flip_prob=0.5)
    p = sample_parameters(20000, aug, g)
    assert p["brightness"].min() >= 0.6 and p["brightness"].max() <= 1.4
    assert p["hue"].abs().max() <= 0.1
    assert abs(p["grayscale"].float().mean() - 0.2) < 0.015
    assert abs(p["flip"].float().mean() - 0.5) < 0.015
    assert abs(p["jitter"].float().mean() - 0.8) < 0.015


def test_views_are_random_per_image_and_reproducible():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    images[:] = images[0]  # six copies of one image must still get six different views
    sampler = ViewSampler([Augment(size=8), Augment(size=8)], seed=3)
    state = sampler.get_state()
    v1, v2 = sampler(images, torch.arange(6))
    assert v1.shape == (6, 3, 8, 8)
    flat = v1.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 1e-3
    assert not torch.equal(v1, v2)
    sampler.set_state(state)
    w1, _ = sampler(images, torch.arange(6))
    torch.testing.assert_close(w1, v1, atol=0, rtol=0)


def test_identity_recipe_gives_normalised_image():
    aug = Augment(
        size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_prob=0, grayscale_prob=0, flip_prob=0
    )
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    (view,) = ViewSampler([aug])(images, torch.arange(2))
    mean, std = torch.tensor(aug.mean).view(1, 3, 1, 1), torch.tensor(aug.std).view(1, 3, 1, 1)
    torch.testing.assert_close(view, (images / 255 - mean) / std, atol=1e-5, rtol=0)


def test_bad_recipe_is_rejected():
    with pytest.raises(ValueError, match="flip_prob"):
        Augment(flip_prob=1.5)


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    values = torch.cat([a, b]).unique()
    cdf_a = torch.searchsorted(a.sort().values, values, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, values, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


@pytest.mark.parametrize("size", [(60, 400), (400, 60), (375, 500)])
def test_crop_centres_match_torchvision_also_when_no_attempt_fits(size):
    """A panorama (60x400) or a tall strip meets RandomResizedCrop's fallback often; torchvision
    centres the fallback crop. Crop centres and sizes of 20,000 boxes against torchvision's."""
    n = 20000
    boxes = random_resized_boxes(
        n, size, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)
    )
    reference = torchvision_boxes(n, size)
    ours = boxes.double()
    for axis in (0, 1):
        centre_ours = ours[:, axis] + ours[:, 2 + axis] / 2
        centre_reference = reference[:, axis] + reference[:, 2 + axis] / 2
        assert ks_statistic(centre_ours, centre_reference) < 0.02, axis
        assert ks_statistic(ours[:, 2 + axis], reference[:, 2 + axis]) < 0.02, axis
