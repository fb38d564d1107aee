"""The view grid: each image whole, at its own aspect, beside the views the model receives,
drawn without changing the run's stream of views."""

import torch

from contrastlab.methods import MoCoV2
from contrastlab.runs.view_grid import MIN_TILE, letterbox, to_pixels, view_grid
from contrastlab.views.augment import Augment


def test_letterbox_keeps_the_aspect_on_grey():
    portrait = torch.full((3, 20, 10), 200, dtype=torch.uint8)
    boxed = letterbox(portrait, 16)
    assert boxed.shape == (3, 16, 16)
    assert (boxed[:, :, 4:12] == 200).all()  # 16 x 8 of content, centred
    assert (boxed[:, :, :4] == 128).all() and (boxed[:, :, 12:] == 128).all()


def test_to_pixels_inverts_the_normalisation():
    augment = Augment()
    pixels = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
    mean = torch.tensor(augment.mean).view(3, 1, 1)
    std = torch.tensor(augment.std).view(3, 1, 1)
    normalised = (pixels.float() / 255 - mean) / std
    assert torch.equal(to_pixels(normalised, augment.mean, augment.std), pixels)


def test_the_grid_shows_the_samplers_views_and_leaves_its_state():
    model = MoCoV2(queue_size=32, bn_splits=1, augment=Augment(size=32))
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    batch = (images, torch.arange(6), torch.zeros(6, dtype=torch.long))
    before = model.views.get_state()
    picture = view_grid(model, batch, 3)
    assert torch.equal(model.views.get_state(), before)  # training draws what it would have
    tile = MIN_TILE + 2  # 32-px tiles enlarged, 2 px of padding
    assert picture.shape == (3, 3 * tile + 2, 3 * tile + 2)
    views = model.views(images[:3], torch.arange(3))  # the same state: the same views
    second_view_of_image_1 = picture[:, tile + 2 : 2 * tile, 2 * tile + 2 : 3 * tile]
    expected = to_pixels(views[1][1], model.augment.mean, model.augment.std)
    enlarged = torch.nn.functional.interpolate(expected[None].float(), size=MIN_TILE)[0]
    assert torch.equal(second_view_of_image_1, enlarged.to(torch.uint8))


def test_the_crops_picture_shows_a_photo_at_its_own_aspect():
    """Photos squashed to squares for localisation are drawn back at their own aspect, and
    their boxes with them."""
    from contrastlab.app.figures import CropPicture, draw_crop_picture

    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    box = torch.tensor([[0.0, 0.0, 0.5, 1.0]])  # the top half
    crops = torch.tensor([[[0, 0, 16, 32]]])
    picture = CropPicture(
        images, torch.zeros(1, 32, 32), box, None, crops, torch.tensor([[60, 120]])
    )
    assert picture.display_scale(0) == (0.5, 1.0)  # landscape 1:2: half as tall, as wide
    figure = draw_crop_picture(picture)
    image_axis, heat_axis = figure.axes[0], figure.axes[1]
    left, right, bottom, top = image_axis.images[0].get_extent()
    assert (right - left, bottom - top) == (32, 16)
    (patch,) = heat_axis.patches
    assert (patch.get_width(), patch.get_height()) == (32, 8)  # the top half of 32 x 16
