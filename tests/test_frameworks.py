"""SimCLR, BYOL and SimSiam: losses against hand-computed values, and a training step of every
framework with and without ContrastiveCrop."""

import math
from pathlib import Path

import pytest
import torch
from conftest import CCROP_FIRST, QUIET_BATCHES_OF_16, fit_run
from torch.nn import functional as F

from contrastlab.app.cli import main
from contrastlab.app.figures import crop_picture
from contrastlab.methods import SimCLR
from contrastlab.methods.byol import byol_loss, cosine_momentum
from contrastlab.methods.simsiam import simsiam_loss
from contrastlab.negatives import SyntheticNegatives
from contrastlab.negatives.losses import ntxent_logits, ntxent_loss
from contrastlab.runs.resume import load_checkpoint_file, method_from_checkpoint
from contrastlab.views import ContrastiveCrop, boxes_from_heatmaps, localize_boxes
from contrastlab.views.augment import whole_view


def slow_ntxent(z: torch.Tensor, partner: list[int], temperature: float) -> float:
    """Row by row, in Python: -log exp(s_ip / T) / sum_{j != i} exp(s_ij / T)."""
    total = 0.0
    for i in range(len(z)):
        sims = [float(z[i] @ z[j]) / temperature for j in range(len(z))]
        denominator = sum(math.exp(s) for j, s in enumerate(sims) if j != i)
        total += -math.log(math.exp(sims[partner[i]]) / denominator)
    return total / len(z)


def test_ntxent_of_identical_embeddings_is_log_of_the_candidates():
    z = F.normalize(torch.ones(6, 3), dim=1)  # 3 images, 2 views: every similarity is 1
    logits, positives = ntxent_logits(z)
    assert torch.equal(positives, torch.tensor([3, 4, 5, 0, 1, 2]))
    assert ntxent_loss(logits, positives, 0.5).item() == pytest.approx(math.log(5), abs=1e-6)


def test_ntxent_matches_a_slow_reference():
    z = F.normalize(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    logits, positives = ntxent_logits(z)
    expected = slow_ntxent(z, [4, 5, 6, 7, 0, 1, 2, 3], 0.5)
    assert ntxent_loss(logits, positives, 0.5).item() == pytest.approx(expected, abs=1e-5)


def test_ntxent_across_processes_equals_the_global_batch():
    # two "processes" with 2 images each: rank r holds rows [view1 of its images; view2]
    z = F.normalize(torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), dim=1)
    losses = [
        ntxent_loss(*ntxent_logits(z[4 * rank : 4 * rank + 4], z, offset=4 * rank), 0.2)
        for rank in (0, 1)
    ]
    expected = slow_ntxent(z, [2, 3, 0, 1, 6, 7, 4, 5], 0.2)
    assert torch.stack(losses).mean().item() == pytest.approx(expected, abs=1e-5)


def test_ntxent_synthetic_negatives_only_add_to_the_denominator():
    z = F.normalize(torch.randn(8, 5, generator=torch.Generator().manual_seed(2)), dim=1)
    logits, positives = ntxent_logits(z)
    excluded = torch.isinf(logits)
    excluded[torch.arange(8), positives] = True
    synthetic = SyntheticNegatives(n_hard=6, mixup=4, interpolated=3)
    extra = synthetic(z, z, z @ z.T, excluded, generator=torch.Generator().manual_seed(0))
    plain = ntxent_loss(logits, positives, 0.5)
    expected = -(logits.gather(1, positives[:, None]) / 0.5).squeeze(1) + torch.logsumexp(
        torch.cat([logits, extra], 1) / 0.5, dim=1
    )
    with_synthetics = ntxent_loss(logits, positives, 0.5, extra)
    assert with_synthetics.item() == pytest.approx(expected.mean().item(), abs=1e-6)
    assert with_synthetics > plain
    # the pool (6 of the 6 allowed per row) never holds the row itself or its positive
    pool = synthetic.hard_pool(z, z, z @ z.T, excluded)
    assert not excluded.gather(1, pool.index).any()


def test_byol_loss_hand_computed():
    p = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    z = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    # cosines 0 and 1/sqrt(2): mean of 2 and 2 - sqrt(2)
    assert byol_loss(p, z).item() == pytest.approx((2 + 2 - math.sqrt(2)) / 2, abs=1e-6)
    z.requires_grad_(True)
    p.requires_grad_(True)
    byol_loss(p, z).backward()
    assert z.grad is None and p.grad is not None  # stop-gradient on the target


def test_simsiam_loss_hand_computed():
    p1, z2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[5.0, 0.0]])  # cos 1
    p2, z1 = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])  # cos 0
    for t in (p1, p2, z1, z2):
        t.requires_grad_(True)
    loss = simsiam_loss(p1, p2, z1, z2)
    assert loss.item() == pytest.approx(-0.5)
    loss.backward()
    assert z1.grad is None and z2.grad is None  # stop-gradient on the projections
    assert p1.grad is not None and p2.grad is not None


def test_byol_cosine_momentum_schedule():
    assert cosine_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 50, 100) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 100, 100) == pytest.approx(1.0)


FRAMEWORK_TINY = [
    "--model.augment.size",
    "8",
    "--model.bn_splits",
    "2",
    *QUIET_BATCHES_OF_16,
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.check_val_every_n_epoch",
    "1",
]


def fit_tiny(run_dir: Path, data_root: Path, config: str, *extra: str) -> dict:
    return fit_run(run_dir, data_root, config, *FRAMEWORK_TINY, *extra)


@pytest.mark.parametrize("framework", ["mocov2", "simclr", "byol", "simsiam"])
@pytest.mark.parametrize("ccrop", [False, True])
def test_every_framework_trains_with_and_without_contrastive_crop(
    tmp_path: Path, tiny_cifar: Path, framework: str, ccrop: bool
):
    extra = ["--model.queue_size", "40"] if framework == "mocov2" else []
    if ccrop:
        extra += CCROP_FIRST
    run_dir = tmp_path / "run"
    config = f"cifar10/{framework}{'_ccrop' if ccrop else ''}"
    checkpoint = fit_tiny(run_dir, tiny_cifar, config, *extra)
    assert checkpoint["global_step"] == 2
    assert "knn/top1" in (run_dir / "metrics.csv").read_text()
    state = checkpoint["state_dict"]
    if framework == "mocov2":  # the queue holds both steps' 16 keys (a frozen one would not)
        assert int(state["queue.pointer"]) == 32 and int((state["queue.indices"] >= 0).sum()) == 32
    assert ("views.box_sampler.boxes" in state) == ccrop
    if ccrop:
        boxes = state["views.box_sampler.boxes"]
        assert bool(state["views.box_sampler.active"]) and len(boxes) == 100
        assert (boxes != torch.tensor([0.0, 0.0, 1.0, 1.0])).any()  # localised, not the default


def test_simsiam_predictor_keeps_a_fixed_learning_rate(tmp_path, tiny_cifar):
    run_dir = tmp_path / "run"
    fit_tiny(run_dir, tiny_cifar, "cifar10/simsiam")
    groups = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["optimizer_states"][0]
    encoder, predictor = groups["param_groups"]
    start = 0.5 * 16 / 512  # the preset's lr for a global batch of 512, run at 16
    assert predictor["lr"] == pytest.approx(start) and encoder["lr"] < start  # cosine: encoder


def test_localize_pass_stores_the_encoders_boxes_for_every_image():
    model = SimCLR(bn_splits=1, crop=ContrastiveCrop(threshold=0.6), channels_last=False)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 16, 16), generator=generator, dtype=torch.uint8)
    batches = [(images[:6], torch.arange(6), None), (images[6:], torch.arange(6, 10), None)]
    model.crop.reset(10)
    model.train()
    model.localize(batches)
    assert model.training  # restored after the eval-mode pass
    model.eval()
    # batch by batch and in the pass's precision (bf16 where measured faster): a conv's last
    # bits depend on both, and a heat value at the threshold would flip
    with torch.no_grad(), model.precision_context():
        maps = [model.backbone.feature_map(whole_view(b[0], model.augment)) for b in batches]
    assert torch.equal(model.crop.boxes, localize_boxes(torch.cat(maps), (16, 16), 0.6))


def test_crops_picture_from_a_checkpoint(tmp_path, tiny_cifar, capsys):
    run_dir = tmp_path / "run"
    fit_tiny(run_dir, tiny_cifar, "cifar10/simclr_ccrop", *CCROP_FIRST)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "pictures" / "crops.png"
    main(["crops", "--checkpoint", str(checkpoint), "--out", str(out), "--images", "3"])
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model = method_from_checkpoint(load_checkpoint_file(checkpoint))
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    picture = crop_picture(model, images, torch.tensor([0, 5, 9]), n_crops=5)
    assert picture.crops.shape == (3, 5, 4) and picture.heat.shape == (3, 32, 32)
    assert torch.equal(picture.stored, model.crop.boxes[[0, 5, 9]])
    assert torch.equal(picture.boxes, boxes_from_heatmaps(picture.heat, 0.5))
    top, left, h, w = picture.crops.unbind(-1)
    assert (
        (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    )


def test_plug_ins_and_the_example_import_no_lightning():
    import subprocess
    import sys

    example = Path(__file__).parents[1] / "examples" / "plain_loop.py"
    code = (
        "import runpy, sys; import contrastlab.views, contrastlab.negatives, contrastlab.models; "
        f"runpy.run_path({str(example)!r}); "
        "assert not [m for m in sys.modules if m.split('.')[0].endswith('lightning')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plain_pytorch_example_trains():
    import importlib.util

    path = Path(__file__).parents[1] / "examples" / "plain_loop.py"
    spec = importlib.util.spec_from_file_location("plain_loop", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    arguments = ["--random", "--images", "32", "--epochs", "2", "--batch", "16", "--queue", "48"]
    losses = example.main([*arguments, "--size", "16"])
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


def test_both_plug_ins_at_once(tmp_path, tiny_cifar):
    run_dir = tmp_path / "run"
    synthetic = ["--model.synthetic.init_args.n_hard", "16", "--model.synthetic_warmup_epochs", "0"]
    extra = ["--model.queue_size", "40", *synthetic, *CCROP_FIRST]
    checkpoint = fit_tiny(run_dir, tiny_cifar, "cifar10/mocov2_synco_ccrop", *extra)
    assert bool(checkpoint["state_dict"]["views.box_sampler.active"])
    assert checkpoint["hyper_parameters"]["synthetic"]["n_hard"] == 16
    assert "hardness/synthetic_above_positive" in (run_dir / "metrics.csv").read_text()
