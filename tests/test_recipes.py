"""Recipes tested like equations: every preset against its card, the options the authors'
recipes need against independent computations of the authors' code, and the card checker
against presets that drift."""

from __future__ import annotations

import copy
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import contrastlab.presets as presets
from contrastlab.app.cli import main
from contrastlab.methods import BYOL, MoCoV2, SimCLR, SimSiam
from contrastlab.models.backbones import ResNetBackbone
from contrastlab.options import Note
from contrastlab.presets import (
    Card,
    card_problems,
    list_presets,
    load_card,
    resolved_settings,
)
from contrastlab.schedules import schedule_factor
from contrastlab.views import ContrastiveCrop, SimCCrop
from contrastlab.views.augment import Augment

# --------------------------------------------------------------------------- the cards


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_holds_to_its_card(preset):
    problems = card_problems(load_card(preset))
    assert not problems, f"{preset} differs from its card:\n" + "\n".join(problems)


@pytest.fixture
def scratch_configs(tmp_path, monkeypatch):
    """A configs folder with the shipped sources and two presets, ``t/simclr`` and ``t/base``,
    that are the ContrastiveCrop authors' CIFAR-10 SimCLR recipe; the tests edit ``t/simclr``
    and make its cards."""
    root = tmp_path / "configs"
    shutil.copytree(presets.preset_dir() / presets.SOURCES, root / presets.SOURCES)
    (root / "t").mkdir()
    for name in ("simclr", "base"):
        shutil.copy(presets.preset_dir() / "cifar10" / "simclr.yaml", root / "t" / f"{name}.yaml")
    monkeypatch.setattr(presets, "preset_dir", lambda: root)
    presets._resolved_settings.cache_clear()
    yield root
    presets._resolved_settings.cache_clear()


AUTHORS_SIMCLR = [
    {"source": "contrastivecrop", "fragments": ["small", "cifar10", "simclr", "rcrop"]}
]


def edit_preset(root, old: str, new: str) -> None:
    path = root / "t" / "simclr.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    presets._resolved_settings.cache_clear()


def test_a_preset_that_drifts_from_its_source_fails_its_card(scratch_configs):
    card = Card("t/simclr", "test", "source", AUTHORS_SIMCLR)
    assert card_problems(card) == []
    edit_preset(scratch_configs, "    base_temperature: 0.07\n", "")  # the 7x loss scale
    edit_preset(scratch_configs, "lr_floor: 0.1", "lr_floor: 0.0")
    problems = card_problems(card)
    assert len(problems) == 2
    assert problems[0].startswith("model.lr_floor: ours 0.0, reference 0.1")
    assert problems[1].startswith("model.base_temperature: ours None, reference 0.07")
    assert "losses/NT_Xent_dist.py" in problems[1]  # where the source states it


def test_a_difference_needs_a_reason_and_a_reason_needs_a_difference(scratch_configs):
    edit_preset(scratch_configs, "lr: 0.5", "lr: 0.4")
    explained = {"model.lr": "a reason"}
    assert card_problems(Card("t/simclr", "t", "contrastlab", AUTHORS_SIMCLR, explained)) == []
    stale = {"model.lr": "a reason", "model.weight_decay": "no longer differs"}
    problems = card_problems(Card("t/simclr", "t", "contrastlab", AUTHORS_SIMCLR, stale))
    assert problems == [
        "model.weight_decay: the card explains a difference, but ours equals the reference (0.0001)"
    ]
    unknown = {"model.lr": "a reason", "model.no_such_option": "?"}
    problems = card_problems(Card("t/simclr", "t", "contrastlab", AUTHORS_SIMCLR, unknown))
    assert problems == [
        "model.no_such_option: the card explains a difference in a setting its reference "
        "does not fix"
    ]


def test_a_reference_must_fix_every_setting_that_defines_the_recipe(scratch_configs):
    partial = [{"source": "contrastivecrop", "fragments": ["small", "cifar10", "rcrop"]}]
    problems = card_problems(Card("t/simclr", "t", "source", partial))
    missing = {p.split(":")[0] for p in problems}
    assert missing == {
        "model.class",
        "model.temperature",
        "model.base_temperature",
        "model.loss_scale",
        "model.proj_hidden",
        "model.proj_dim",
        "model.proj_batch_norm",
        "model.proj_out_bn",
    }


def test_a_preset_layer_and_a_plug_in_override_what_they_replace(scratch_configs):
    crop = "    crop:\n      class_path: contrastlab.views.ContrastiveCrop\n"
    edit_preset(scratch_configs, "data:\n", f"{crop}data:\n")
    layers = [{"preset": "t/base"}]
    problems = card_problems(Card("t/simclr", "t", "contrastlab", layers))
    assert problems[0].startswith("model.crop: ours 'ContrastiveCrop', reference None")
    layers.append({"source": "contrastivecrop", "fragments": ["ccrop"]})
    assert card_problems(Card("t/simclr", "t", "contrastlab", layers)) == []


def test_presets_command_prints_the_card(capsys):
    main(["presets", "cifar10/simclr"])
    out = capsys.readouterr().out
    assert out.startswith("cifar10/simclr: SimCLR on CIFAR-10")
    line = next(x for x in out.splitlines() if "model.base_temperature" in x)
    assert line.split()[1:3] == ["0.07", "0.07"] and "NT_Xent_dist.py" in line
    main(["presets", "cifar10/mocov2"])
    out = capsys.readouterr().out
    marked = [x.split()[1] for x in out.splitlines() if x.startswith("! ")]
    assert "model.augment.scale" in marked and "model.proj_hidden" in marked
    assert "  model.augment.scale: MoCo v2's aug+ crops" in out
    main(["presets"])
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == len(list_presets())
    assert any(x.startswith("cifar10/moco_notebook ") and "notebook" in x for x in listing)
    with pytest.raises(SystemExit, match="did you mean cifar10/simclr"):
        main(["presets", "cifar10/simcl"])


# --------------------------------------------------------------------------- the SimCLR scale


def authors_ntxent_dist(feat1, feat2, temperature: float, base_temperature: float):
    """The ContrastiveCrop authors' NT_Xent_dist on one process, as its file computes it:
    logits shifted by their row maximum, positives by mask, ``-(T / base_T) mean log_prob``."""
    n = len(feat1)
    features = F.normalize(torch.cat([feat1, feat2]), dim=1)
    logits = features @ features.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = ~torch.eye(2 * n, dtype=torch.bool)
    positive = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    positive[:n, n:] = torch.eye(n, dtype=torch.bool)
    positive[n:, :n] = torch.eye(n, dtype=torch.bool)
    denominator = torch.exp(logits)[not_self].view(2 * n, -1).sum(1)
    log_prob = logits[positive] - torch.log(denominator)
    return -(temperature / base_temperature) * log_prob.mean()


def preset_model(name: str):
    config = presets._settings_parser().parse_path(str(presets.preset_path(name))).as_dict()
    model = config["model"]
    classes = {"SimCLR": SimCLR, "SimSiam": SimSiam, "MoCoV2": MoCoV2, "BYOL": BYOL}
    return classes[model["class_path"].rsplit(".", 1)[1]](**model["init_args"])


def first_step(model, views, steps_per_epoch: int = 97, epochs: int = 500):
    """One optimiser step of ``model`` as a fit makes it: its own optimiser and schedule
    (through configure_optimizers) at step 0, on the given views."""
    model._trainer = SimpleNamespace(
        estimated_stepping_batches=steps_per_epoch * epochs, max_epochs=epochs
    )
    setup = model.configure_optimizers()
    model._trainer = None
    optimizer = setup["optimizer"]
    loss = model.contrastive_loss(views, torch.arange(len(views[0])), torch.zeros(8))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def test_one_step_of_the_simclr_preset_is_one_step_of_the_authors_recipe():
    torch.manual_seed(0)
    model = preset_model("cifar10/simclr")
    authors = nn.Sequential(copy.deepcopy(model.backbone), copy.deepcopy(model.head))
    unscaled = nn.Sequential(copy.deepcopy(model.backbone), copy.deepcopy(model.head))
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    first_step(model, views)

    # the authors' step: their loss at lr 0.5, wd 1e-4 (configs/small/cifar10/simclr_*.py)
    sgd = torch.optim.SGD(authors.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    features = authors(torch.cat(views))
    authors_ntxent_dist(*features.chunk(2), 0.5, 0.07).backward()
    sgd.step()
    ours = torch.cat(
        [p.detach().flatten() for p in (*model.backbone.parameters(), *model.head.parameters())]
    )
    theirs = torch.cat([p.detach().flatten() for p in authors.parameters()])
    assert torch.allclose(ours, theirs, atol=1e-6)

    # the same step without the scale, at lr x 7.14 and wd / 7.14 (SPEC.md section 1)
    scale = 0.5 / 0.07
    sgd = torch.optim.SGD(
        unscaled.parameters(), lr=0.5 * scale, momentum=0.9, weight_decay=1e-4 / scale
    )
    features = unscaled(torch.cat(views))
    authors_ntxent_dist(*features.chunk(2), 0.5, 0.5).backward()
    sgd.step()
    unscaled_params = torch.cat([p.detach().flatten() for p in unscaled.parameters()])
    assert torch.allclose(unscaled_params, theirs, atol=1e-5)


def test_the_simclr_step_without_the_base_temperature_is_another_step():
    """The check above can fail: the preset's step without its loss scale moves elsewhere."""
    torch.manual_seed(0)
    scaled, plain = preset_model("cifar10/simclr"), preset_model("cifar10/simclr")
    plain.load_state_dict(scaled.state_dict())
    plain.hparams["base_temperature"] = None
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    start = torch.cat([p.detach().flatten().clone() for p in scaled.head.parameters()])
    moved = []
    for model in (scaled, plain):
        first_step(model, views)
        after = torch.cat([p.detach().flatten() for p in model.head.parameters()])
        moved.append((after - start).norm().item())
    assert moved[0] == pytest.approx(moved[1] * 0.5 / 0.07, rel=0.05)


def simclr_reference_loss(hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's objective.py add_contrastive_loss on one core, as its file computes it: each
    view's rows against the other view (``ab``) and its own (``aa``, the diagonal pushed down by
    LARGE_NUM), ``loss_a + loss_b``, each the mean over ``B`` rows."""
    h1, h2 = F.normalize(hidden, dim=-1).chunk(2)
    n = len(h1)
    large = torch.eye(n) * 1e9
    labels = torch.arange(n)
    loss_a = F.cross_entropy(
        torch.cat([h1 @ h2.T / temperature, h1 @ h1.T / temperature - large], 1), labels
    )
    loss_b = F.cross_entropy(
        torch.cat([h2 @ h1.T / temperature, h2 @ h2.T / temperature - large], 1), labels
    )
    return loss_a + loss_b


class SimCLRReferenceHead(nn.Module):
    """model_util.py projection_head ('nonlinear', num_nlh_layers 1) from linear_layer: dense
    without bias -> BN (scale, shift) -> ReLU -> dense without bias -> BN (scale, no shift)."""

    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.dense0, self.norm0 = nn.Linear(width, width, bias=False), nn.BatchNorm1d(width)
        self.dense1, self.norm1 = (
            nn.Linear(width, out, bias=False),
            nn.BatchNorm1d(out, affine=False),
        )
        self.gamma1 = nn.Parameter(torch.ones(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm1(self.dense1(F.relu(self.norm0(self.dense0(x))))) * self.gamma1

    def load_from(self, head: nn.Sequential) -> None:
        """Our head's weights, by layer (our state-dict names are not the reference's)."""
        self.dense0.weight.data = head[0].weight.detach().clone()
        self.norm0.weight.data = head[1].weight.detach().clone()
        self.norm0.bias.data = head[1].bias.detach().clone()
        self.dense1.weight.data = head[3].weight.detach().clone()
        self.gamma1.data = head[4].weight.detach().clone()


def test_the_imagenet_simclr_head_and_loss_are_the_authors():
    """imagenet/simclr: the head is the reference's (a shift-free last BatchNorm, no biases
    anywhere but the first BatchNorm), and the loss is objective.py's ``loss_a + loss_b``, twice
    the NT-Xent mean over 2B (loss_scale 2)."""
    torch.manual_seed(0)
    model = preset_model("imagenet/simclr")
    head = model.head
    with torch.no_grad():  # learnt values differ from their starting ones: any must flow through
        head[1].weight.uniform_(0.5, 1.5)
        head[1].bias.uniform_(-1, 1)
        head[4].weight.uniform_(0.5, 1.5)
    assert head[4].bias is None and "head.4.bias" not in model.state_dict()
    assert head[0].bias is None and head[3].bias is None
    theirs = SimCLRReferenceHead(2048, 128)
    theirs.load_from(head)
    x = torch.randn(16, 2048)
    torch.testing.assert_close(head(x), theirs(x), atol=1e-5, rtol=1e-5)

    views = [torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)]
    loss = model.contrastive_loss(views, torch.arange(4), torch.zeros(4))
    reference = simclr_reference_loss(theirs(model.backbone(torch.cat(views))), 0.1)
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    model.hparams["loss_scale"] = 1.0  # the comparison can tell: without it, half the loss
    halved = model.contrastive_loss(views, torch.arange(4), torch.zeros(4))
    torch.testing.assert_close(halved, reference / 2, atol=1e-5, rtol=1e-5)


def test_the_lightly_simclr_head_is_lightlys():
    """lightly 1.4.3's SimCLRProjectionHead(512, 512, 128) (the commit its CIFAR-10 table names):
    BatchNorm after both Linears, both Linears without bias, the last BatchNorm with a shift."""
    torch.manual_seed(0)
    ours = preset_model("cifar10/lightly_simclr").head
    theirs = nn.Sequential(
        nn.Linear(512, 512, bias=False),
        nn.BatchNorm1d(512),
        nn.ReLU(),
        nn.Linear(512, 128, bias=False),
        nn.BatchNorm1d(128),
    )
    theirs.load_state_dict(ours.state_dict())  # the same names: same layers, same parameters
    with torch.no_grad():
        theirs[4].weight.uniform_(0.5, 1.5)
        theirs[4].bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(16, 512)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    plain = preset_model("cifar10/simclr").head
    assert isinstance(plain[-1], nn.Linear) and plain[-1].bias is not None


# --------------------------------------------------------------------------- schedules


def authors_cosine(lr: float, decay_rate: float, epoch: int, epochs: int) -> float:
    """ContrastiveCrop's utils/util.py _get_lr for ``type='Cosine'``, epochs counted from 1."""
    eta_min = lr * decay_rate
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2


def notebook_cosine(lr: float, epoch: int, epochs: int) -> float:
    """MoCo's CIFAR-10 notebook adjust_learning_rate, epochs counted from 1."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


@pytest.mark.parametrize("epochs", [5, 500])
def test_per_epoch_schedules_are_the_sources(epochs):
    steps = 7
    for epoch in range(1, epochs + 1):
        for step in ((epoch - 1) * steps, epoch * steps - 1):  # first and last step of it
            ours = 0.5 * schedule_factor(step, steps, epochs, 0, 0.1, "epoch")
            assert ours == pytest.approx(authors_cosine(0.5, 0.1, epoch, epochs), abs=1e-12)
            ours = 0.06 * schedule_factor(step, steps, epochs, 0, 0.0, "epoch_end")
            assert ours == pytest.approx(notebook_cosine(0.06, epoch, epochs), abs=1e-12)


def test_per_step_cosine_ends_at_its_floor():
    total = 100
    assert schedule_factor(0, 10, 10, 0, 0.1, "step") == pytest.approx(1.0)
    assert schedule_factor(total, 10, 10, 0, 0.1, "step") == pytest.approx(0.1)
    assert schedule_factor(50, 10, 10, 0, 0.1, "step") == pytest.approx(0.55)
    with pytest.raises(ValueError, match="lr_interval"):
        schedule_factor(0, 10, 10, 0, 0.0, "batch")


def test_the_preset_schedule_through_configure_optimizers():
    model = preset_model("cifar10/simclr")
    model._trainer = SimpleNamespace(estimated_stepping_batches=3 * 4, max_epochs=3)
    setup = model.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [authors_cosine(0.5, 0.1, 1 + i // 4, 3) for i in range(12)]
    assert seen == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- networks


def test_simsiam_three_layer_projector_is_the_authors_network():
    """The authors' projector (models/simsiam.py) keeps a frozen bias in its last Linear; the
    affine-free BatchNorm after it removes it, so ours without that bias is the same function."""
    torch.manual_seed(0)
    ours = preset_model("cifar10/simsiam").head
    kinds = [type(m).__name__ for m in ours]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert [m.out_features for m in ours if isinstance(m, nn.Linear)] == [512, 512, 512]
    assert ours[-1].affine is False
    theirs = nn.Sequential(
        nn.Linear(512, 512, bias=False),
        nn.BatchNorm1d(512),
        nn.ReLU(),
        nn.Linear(512, 512, bias=False),
        nn.BatchNorm1d(512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.BatchNorm1d(512, affine=False),
    )
    for mine, their in zip(ours, theirs, strict=True):
        if isinstance(mine, nn.Linear):
            their.weight.data.copy_(mine.weight.data)
    theirs[6].bias.data.uniform_(-1, 1)  # the frozen bias, any value
    x = torch.randn(16, 512)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def lightly_byol_step(model, views, scale: float = 1.0) -> torch.Tensor:
    """One step of lightly's BYOLModel (cifar10_benchmark.py) from ``model``'s weights: SGD
    lr 0.06 x 4, wd 5e-4 over backbone, projector and predictor, on
    ``scale * 0.5 (-cos(p0, z1) - cos(p1, z0))``; returns the parameters after it."""
    online = nn.ModuleList(
        [copy.deepcopy(model.backbone), copy.deepcopy(model.head), copy.deepcopy(model.predictor)]
    )
    target = nn.Sequential(copy.deepcopy(model.target_backbone), copy.deepcopy(model.target_head))
    sgd = torch.optim.SGD(online.parameters(), lr=0.06 * 4, momentum=0.9, weight_decay=5e-4)
    backbone, head, predictor = online
    p0, p1 = (predictor(head(backbone(x))) for x in views)
    with torch.no_grad():
        z0, z1 = (target(x) for x in views)
    loss = 0.5 * (-F.cosine_similarity(p0, z1).mean() - F.cosine_similarity(p1, z0).mean())
    (scale * loss).backward()
    sgd.step()
    return torch.cat([p.detach().flatten() for p in online.parameters()])


def test_one_step_of_the_lightly_byol_preset_is_one_step_of_lightlys_recipe():
    """loss_scale 0.25 is lightly's loss, a quarter of BYOL's (2 - 2 cos) + (2 - 2 cos)."""
    torch.manual_seed(0)
    model = preset_model("cifar10/lightly_byol")
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    theirs = lightly_byol_step(model, views)
    theirs_unscaled = lightly_byol_step(model, views, scale=4.0)  # BYOL's own loss scale
    loss = first_step(model, views, epochs=200)
    ours = torch.cat(
        [
            p.detach().flatten()
            for m in (model.backbone, model.head, model.predictor)
            for p in m.parameters()
        ]
    )
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert not torch.allclose(ours, theirs_unscaled, atol=1e-4)
    assert 0 <= float(loss.detach()) <= 2  # 0.25 (4 - 2 (cos + cos)) = 1 + lightly's loss


def test_the_simsiam_projector_with_an_affine_output_is_lightlys():
    torch.manual_seed(0)
    ours = preset_model("cifar10/lightly_simsiam").head
    assert ours[-1].affine is True
    theirs = nn.Sequential(
        nn.Linear(512, 2048, bias=False),
        nn.BatchNorm1d(2048),
        nn.ReLU(),
        nn.Linear(2048, 2048, bias=False),
        nn.BatchNorm1d(2048),
    )
    theirs.load_state_dict(ours.state_dict())
    theirs[4].weight.data.uniform_(0.5, 1.5)
    theirs[4].bias.data.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())  # the affine is learnt: any value flows through
    x = torch.randn(16, 512)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    plain = preset_model("cifar10/simsiam").head
    assert plain[-1].affine is False


def test_the_second_view_has_its_own_recipe():
    """lightly's BYOL solarises only the second view, with p 0.2: on a flat image above the
    threshold, the share of solarised views is 0 in view 1 and 0.2 in view 2."""
    flat = dict(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_prob=0.0, grayscale_prob=0.0)
    flat |= dict(flip_prob=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    model = SimCLR(
        backbone="resnet18", augment=Augment(**flat), second_view={**flat, "solarize_prob": 0.2}
    )
    assert model.hparams.second_view["solarize_prob"] == 0.2  # plain values for checkpoints
    images = torch.full((4000, 3, 8, 8), 200, dtype=torch.uint8)
    first, second = model.views(images, torch.arange(4000))
    solarised = [float((view.mean(dim=(1, 2, 3)) < 0.5).float().mean()) for view in (first, second)]
    assert solarised[0] == 0.0
    assert abs(solarised[1] - 0.2) < 0.02  # binomial sd 0.0063 at n 4000
    assert torch.allclose(second[second.mean(dim=(1, 2, 3)) < 0.5], torch.tensor(55 / 255))


def test_a_second_view_cropped_otherwise_is_refused():
    from contrastlab.options import OptionError

    with pytest.raises(OptionError, match=r"model.second_view.scale = \(0.08, 1.0\) differs"):
        SimCLR(augment=Augment(scale=(0.2, 1.0)), second_view=Augment(scale=(0.08, 1.0)))


def test_zero_init_residual_starts_every_block_as_the_identity():
    plain = ResNetBackbone("resnet18", cifar_stem=True)
    zeroed = ResNetBackbone("resnet18", cifar_stem=True, zero_init_residual=True)
    blocks = [
        b for layer in ("layer1", "layer2", "layer3", "layer4") for b in getattr(zeroed.net, layer)
    ]
    assert all(torch.all(b.bn2.weight == 0) for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    assert all(torch.all(b.bn2.weight == 1) for layer in (plain.net.layer1,) for b in layer)
    # a block whose residual branch is zero returns relu(its shortcut): the identity on ReLU output
    block = zeroed.net.layer1[0].eval()
    x = torch.relu(torch.randn(2, 64, 8, 8))
    assert torch.equal(block(x), x)
    # a timm model has no torchvision residual branches: the option is set aside with a note
    with pytest.warns(Note, match="model.zero_init_residual set aside: timm/test_convnext"):
        MoCoV2(backbone="timm/test_convnext", cifar_stem=False, zero_init_residual=True)


def test_the_notebook_head_is_linear_and_its_knn_features_are_the_heads():
    model = preset_model("cifar10/moco_notebook").eval()
    assert [type(m).__name__ for m in model.head] == ["Linear"]
    assert (model.head[0].in_features, model.head[0].out_features) == (512, 128)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    monitored = model.monitor_features(images)
    assert monitored.shape == (4, 128)
    assert torch.allclose(monitored, model.head(model.features(images)))
    assert model.features(images).shape == (4, 512)  # what the evaluation commands measure
    model.hparams["knn_features"] = "backbone"
    assert model.monitor_features(images).shape == (4, 512)


# --------------------------------------------------------------------------- crop geometry


def test_contrastive_crop_takes_the_views_scale_and_ratio_unless_set():
    views = Augment(scale=(0.4, 1.0), ratio=(0.5, 2.0))
    model = MoCoV2(augment=views, crop=ContrastiveCrop(), queue_size=64)
    assert (model.crop.scale, model.crop.ratio) == ((0.4, 1.0), (0.5, 2.0))
    assert model.hparams["crop"]["scale"] == [0.4, 1.0]
    same = MoCoV2(augment=views, crop=SimCCrop(scale=(0.4, 1.0)), queue_size=64)
    assert same.crop.scale == (0.4, 1.0) and same.crop.ratio == (0.5, 2.0)
    with pytest.raises(ValueError) as refused:
        MoCoV2(augment=views, crop=ContrastiveCrop(scale=(0.2, 1.0)), queue_size=64)
    assert "model.crop.scale = [0.2, 1.0]" in str(refused.value)
    assert "model.augment.scale = [0.4, 1.0]" in str(refused.value)
    # a checkpoint's crop keeps the geometry it ran with
    saved = ContrastiveCrop(scale=(0.2, 1.0)).config()
    assert MoCoV2(augment=views, crop=saved, queue_size=64).crop.scale == (0.2, 1.0)


def test_the_fit_command_refuses_a_crop_scale_unlike_the_views(tmp_path, tiny_cifar):
    with pytest.raises(SystemExit) as refused:
        main(
            [
                "fit",
                "--config",
                "cifar10/simclr_ccrop",
                "--data.root",
                str(tiny_cifar),
                "--trainer.default_root_dir",
                str(tmp_path / "run"),
                "--model.augment.scale",
                "[0.3, 1.0]",
                "--model.crop.init_args.scale",
                "[0.2, 1.0]",
            ]
        )
    assert "model.crop.scale = [0.2, 1.0]" in str(refused.value)
    assert "model.augment.scale = [0.3, 1.0]" in str(refused.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resolved_settings_hold_what_a_run_gets():
    settings = resolved_settings("cifar10/simclr_ccrop")
    assert settings["model.crop.class"] == "ContrastiveCrop"
    assert settings["model.crop.scale"] is None  # the views' (0.2, 1.0) at run time
    assert settings["model.sgd_momentum"] == 0.9  # a constructor default
    assert "model.channels_last" not in settings and "trainer.default_root_dir" not in settings


def test_the_readme_preset_table_is_the_cards():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- presets:begin -->\n")[1].split("\n<!-- presets:end -->")[0]
    assert block == presets.presets_table()
