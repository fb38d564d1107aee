"""Any encoder: a tiny timm ViT and ConvNeXt through MoCo v2 + SynCo, SimCLR + ContrastiveCrop,
localisation, the safetensors export (strict reload in timm), initial weights from a local file,
resume, and the errors a user meets with a wrong backbone option."""

import json
from pathlib import Path

import pytest
import torch
from conftest import CCROP_FIRST, QUIET_BATCHES_OF_16, fit_run
from safetensors.torch import load_file

from contrastlab.app.cli import main
from contrastlab.app.export import export_backbone
from contrastlab.methods import MoCoV2, SimCLR
from contrastlab.models.backbones import TimmBackbone, build_backbone
from contrastlab.models.exported import timm_backbone
from contrastlab.options import Note
from contrastlab.runs.resume import load_checkpoint_file, method_from_checkpoint
from contrastlab.views import ContrastiveCrop, localize_boxes
from contrastlab.views.augment import whole_view

TINY = {
    "vit": (
        "timm/vit_tiny_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
    ),
    "convnext": (
        "timm/convnext_atto",
        {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32], "patch_size": 1},
    ),
}
"""Both end at a 4x4 map on 32 px images: the ViT's 8 px patches, the ConvNeXt's stride-1 stem
and three 2x downsamplings."""


def tiny(kind: str, **kwargs) -> dict:
    name, backbone_kwargs = TINY[kind]
    return {"backbone": name, "backbone_kwargs": backbone_kwargs, "cifar_stem": False, **kwargs}


def cli_backbone(kind: str) -> list[str]:
    """A timm backbone on a CIFAR preset: nothing else to set (the preset's CIFAR stem,
    SplitBatchNorm and zero-initialised residuals are set aside with a note)."""
    name, backbone_kwargs = TINY[kind]
    return ["--model.backbone", name, "--model.backbone_kwargs", json.dumps(backbone_kwargs)]


def test_vit_feature_map_is_the_patch_tokens_on_their_grid():
    backbone = build_backbone(*TINY["vit"][:1], kwargs=TINY["vit"][1]).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    net = backbone.net
    with torch.no_grad():
        # the last block's tokens, before the final norm: (2, 1 + 16, 32), class token first
        tokens = net.blocks(net.norm_pre(net._pos_embed(net.patch_embed(x))))
        grid = backbone.feature_map(x)
        pooled = backbone(x)
        normed = net.forward_features(x)
    assert grid.shape == (2, 32, 4, 4)
    for row, col in [(0, 0), (0, 3), (2, 1), (3, 3)]:
        torch.testing.assert_close(grid[:, :, row, col], tokens[:, 1 + 4 * row + col])
    torch.testing.assert_close(pooled, normed[:, 0])  # the class token is the feature
    assert backbone.feature_dim == pooled.shape[1] == 32
    # why not after the final LayerNorm: there every token's channel sum is the bias sum (0)
    torch.testing.assert_close(normed.sum(-1), torch.zeros(2, 17), atol=1e-4, rtol=0)
    assert grid.sum(1).std() > 0.1
    # ContrastiveCrop localises on each patch token's norm, which is never negative (the
    # channel sum is d times the token's mean: signed)
    saliency = backbone.saliency_map(x)
    assert saliency.shape == (2, 1, 4, 4) and (saliency >= 0).all()
    torch.testing.assert_close(saliency[:, 0], grid.norm(dim=1))
    assert (grid.sum(1) < 0).any()


def test_convnext_feature_map_is_the_last_stage():
    backbone = build_backbone(TINY["convnext"][0], kwargs=TINY["convnext"][1]).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        grid = backbone.feature_map(x)
        pooled = backbone(x)
    assert grid.shape == (2, 32, 4, 4) and backbone.feature_dim == 32
    # timm's ConvNeXt head: global average, then LayerNorm over channels
    expected = backbone.net.head.norm(grid.mean(dim=(2, 3), keepdim=True)).flatten(1)
    torch.testing.assert_close(pooled, expected)


@pytest.mark.parametrize("kind", ["vit", "convnext"])
def test_localisation_finds_content_in_one_corner(kind):
    """A textured top-left quarter on a flat grey image. The untrained network's flat-region
    features are alike, so each box is either the whole image (the flat region's channel sum is
    the highest) or lies in the top-left corner, within a patch / receptive field of it; with
    this seed some are in the corner."""
    torch.manual_seed(1)
    crop = ContrastiveCrop(threshold=0.5)
    model = SimCLR(**tiny(kind), bn_splits=1, crop=crop, channels_last=False)
    generator = torch.Generator().manual_seed(0)
    images = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    images[:, :, :16, :16] = torch.randint(0, 256, (4, 3, 16, 16), generator=generator)
    model.crop.reset(4)
    model.localize([(images, torch.arange(4), None)])
    boxes = model.crop.boxes
    whole = (boxes == torch.tensor([0.0, 0.0, 1.0, 1.0])).all(dim=1)
    assert not whole.all(), boxes
    assert (boxes[~whole] <= 0.65).all(), boxes  # (top, left, bottom, right) in the corner
    with torch.no_grad():
        whole = model._layout(whole_view(images, model.augment))
        maps = model.eval().backbone.saliency_map(whole)
    assert torch.equal(boxes, localize_boxes(maps, (32, 32), 0.5))


FIT_TINY = [
    *QUIET_BATCHES_OF_16,
    "--model.augment.size",
    "32",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
]


def fit(run_dir: Path, data_root: Path, config: str, *extra: str) -> dict:
    return fit_run(run_dir, data_root, config, *FIT_TINY, *extra)


SYNCO_TINY = [
    "--model.queue_size",
    "64",
    "--model.synthetic.init_args.n_hard",
    "16",
    "--model.synthetic_warmup_epochs",
    "0",
]


@pytest.mark.parametrize("kind", ["vit", "convnext"])
def test_mocov2_synco_trains_a_timm_backbone(tmp_path, tiny_cifar, kind, capsys):
    with pytest.warns(Note) as notes:
        checkpoint = fit(
            tmp_path / "run", tiny_cifar, "cifar10/mocov2_synco", *cli_backbone(kind), *SYNCO_TINY
        )
    said = {str(w.message).split(":")[0] for w in notes if w.category is Note}
    assert {"model.cifar_stem set aside", "model.bn_splits set aside"} <= said
    assert checkpoint["global_step"] == 2
    assert checkpoint["hyper_parameters"]["backbone"] == TINY[kind][0]
    text = (tmp_path / "run" / "metrics.csv").read_text()
    assert "knn/top1" in text and "hardness/synthetic_above_positive" in text  # synthetics made


@pytest.mark.parametrize("kind", ["vit", "convnext"])
def test_simclr_contrastive_crop_trains_a_timm_backbone(tmp_path, tiny_cifar, kind):
    checkpoint = fit(
        tmp_path / "run", tiny_cifar, "cifar10/simclr_ccrop", *cli_backbone(kind), *CCROP_FIRST
    )
    boxes = checkpoint["state_dict"]["views.box_sampler.boxes"]
    assert checkpoint["global_step"] == 2 and len(boxes) == 100
    assert (boxes != torch.tensor([0.0, 0.0, 1.0, 1.0])).any()


@pytest.mark.parametrize("framework", ["byol", "simsiam"])
def test_byol_and_simsiam_train_a_timm_backbone(tmp_path, tiny_cifar, framework):
    # the SimSiam preset zero-initialises a ResNet's residual branches: set aside for a ViT
    with pytest.warns(Note) as notes:
        checkpoint = fit(tmp_path / "run", tiny_cifar, f"cifar10/{framework}", *cli_backbone("vit"))
    said = " ".join(str(w.message) for w in notes)
    assert ("model.zero_init_residual set aside" in said) == (framework == "simsiam")
    assert checkpoint["global_step"] == 2
    assert "knn/top1" in (tmp_path / "run" / "metrics.csv").read_text()


def test_evaluations_crops_and_report_work_with_a_vit(tmp_path, tiny_cifar, capsys):
    run_dir = tmp_path / "run"
    ccrop_first = ["--model.crop.init_args.warmup_epochs", "0"]
    fit(run_dir, tiny_cifar, "cifar10/simclr_ccrop", *cli_backbone("vit"), *ccrop_first)
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    main(["knn", "--checkpoint", ckpt, "--k", "5"])
    main(["linear", "--checkpoint", ckpt, "--epochs", "2", "--lr", "0.1"])
    main(["linear", "--checkpoint", ckpt, "--mode", "paper", "--epochs", "1"])
    main(["finetune", "--checkpoint", ckpt, "--labels", "20", "--epochs", "1"])
    main(["crops", "--checkpoint", ckpt, "--out", str(tmp_path / "crops.png"), "--images", "2"])
    main(["report", str(run_dir)])
    out = capsys.readouterr().out
    assert "fine-tuned on 20 labels" in out and "wrote" in out
    assert (tmp_path / "crops.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("knn.png", "embedding.png", "crops_run.png"):
        assert (run_dir / "report" / name).is_file(), name


@pytest.mark.parametrize("kind", ["vit", "convnext"])
def test_safetensors_export_reloads_strictly_in_timm_with_equal_features(tmp_path, kind):
    model = MoCoV2(**tiny(kind), bn_splits=1, queue_size=32).eval()
    out = export_backbone(model, "safetensors", tmp_path / "backbone.safetensors")
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["timm_name"] == TINY[kind][0].removeprefix("timm/")
    assert meta["kwargs"] == TINY[kind][1] and meta["feature_dim"] == 32
    assert meta["input_size"] == 32 and len(meta["mean"]) == len(meta["std"]) == 3

    # the documented lines: nothing from contrastlab needed
    import timm

    net = timm.create_model(meta["timm_name"], num_classes=0, **meta["kwargs"])
    net.load_state_dict(load_file(out), strict=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), model.backbone(x))
    assert "timm.create_model" in meta["load"] and "strict=True" in meta["load"]
    assert isinstance(timm_backbone(meta), torch.nn.Module)


def test_torch_formats_and_resnet_safetensors(tmp_path):
    timm_model = MoCoV2(**tiny("vit"), bn_splits=1, queue_size=32)
    with pytest.raises(ValueError, match="exports as safetensors or timm"):
        export_backbone(timm_model, "torchvision", tmp_path / "vit.pth")
    out = export_backbone(timm_model, "timm", tmp_path / "vit.pth")
    net = timm_backbone(json.loads(Path(f"{out}.json").read_text()))
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)

    from contrastlab.models.exported import torchvision_resnet

    resnet = MoCoV2(bn_splits=2, queue_size=32, channels_last=False).eval()
    out = export_backbone(resnet, "safetensors", tmp_path / "r18.safetensors")
    net = torchvision_resnet("resnet18", cifar_stem=True).eval()
    net.load_state_dict(load_file(out), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(net(x), resnet.backbone(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_backbone_weights_start_from_a_local_file(tmp_path, kind):
    options = tiny(kind) if kind == "vit" else {"channels_last": False}
    source = MoCoV2(**options, bn_splits=1, queue_size=32, seed=1).eval()
    out = export_backbone(source, "safetensors", tmp_path / "start.safetensors")
    torch.manual_seed(123)  # another random initialisation, then the file's weights
    started = MoCoV2(**options, bn_splits=1, queue_size=32, backbone_weights=str(out)).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(started.backbone(x), source.backbone(x))
    # the key encoder starts from the same weights as the online one
    for a, b in zip(started.backbone.parameters(), started.key_backbone.parameters(), strict=True):
        assert torch.equal(a, b)


def test_backbone_weights_from_a_checkpoint_and_a_wrong_file(tmp_path):
    source = MoCoV2(**tiny("vit"), bn_splits=1, queue_size=32, seed=1).eval()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "run.ckpt")
    started = MoCoV2(
        **tiny("vit"), bn_splits=1, queue_size=32, backbone_weights=str(tmp_path / "run.ckpt")
    )
    for a, b in zip(started.backbone.parameters(), source.backbone.parameters(), strict=True):
        assert torch.equal(a, b)
    # a two-block ViT's file has every tensor a one-block ViT needs; the reverse does not
    deeper = MoCoV2(**tiny("vit"), bn_splits=1, queue_size=32)
    out = export_backbone(deeper, "safetensors", tmp_path / "one_block.safetensors")
    kwargs = {**TINY["vit"][1], "depth": 2}
    with pytest.raises(ValueError, match=r"does not hold \d+ of the model's tensors"):
        build_backbone(TINY["vit"][0], kwargs=kwargs, weights=out)


def test_a_timm_run_resumes_exactly(tmp_path, tiny_cifar):
    """Two epochs straight, and one epoch then --resume for the second, end equal."""
    extra = [*cli_backbone("vit"), "--model.queue_size", "32", "--trainer.max_epochs", "2"]
    args = ["--config", "cifar10/mocov2", "--data.root", str(tiny_cifar), *FIT_TINY, *extra]
    main(["fit", *args, "--trainer.default_root_dir", str(tmp_path / "straight")])
    split = ["--trainer.default_root_dir", str(tmp_path / "split")]
    stop = ["--trainer.callbacks+=conftest.StopAfterFirstEpoch"]
    main(["fit", *args, *split, *stop])
    assert load_checkpoint_file(tmp_path / "split/checkpoints/last.ckpt")["epoch"] == 0
    main(["fit", *args, *split, "--resume"])
    straight = load_checkpoint_file(tmp_path / "straight/checkpoints/last.ckpt")
    resumed = load_checkpoint_file(tmp_path / "split/checkpoints/last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 4
    for name, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, msg=name)
    model = method_from_checkpoint(resumed)
    assert isinstance(model.backbone, TimmBackbone)


def test_wrong_backbone_options_say_what_to_do():
    with pytest.raises(ValueError, match="timm has no model 'vit_tinyy_patch16_224'"):
        build_backbone("timm/vit_tinyy_patch16_224")
    with pytest.warns(Note, match="model.cifar_stem set aside: timm/convnext_atto keeps its own"):
        build_backbone("timm/convnext_atto", cifar_stem=True)
    with pytest.raises(ValueError, match="timm models only"):
        build_backbone("resnet18", kwargs={"img_size": 32})
    with pytest.raises(ValueError, match="or a timm model"):
        build_backbone("vit_small")
    with pytest.raises(FileNotFoundError, match="backbone_weights: not found"):
        build_backbone(TINY["vit"][0], kwargs=TINY["vit"][1], weights="/nonexistent.safetensors")


def test_adamw_option_builds_adamw_with_the_warm_up(tmp_path, tiny_cifar):
    checkpoint = fit(
        tmp_path / "run",
        tiny_cifar,
        "cifar10/mocov2",
        *cli_backbone("vit"),
        "--model.queue_size",
        "32",
        "--model.optimizer",
        "adamw",
        "--model.lr",
        "0.001",
        "--model.weight_decay",
        "0.05",
        "--model.warmup_epochs",
        "4",
    )
    group = checkpoint["optimizer_states"][0]["param_groups"][0]
    assert "betas" in group and group["weight_decay"] == 0.05  # AdamW, not SGD
    # a warm-up of 4 epochs of 2 steps: after 2 steps the rate is (2 + 1) / 8 of the lr, which
    # the preset wrote for a global batch of 512 and this run of 16 scales linearly
    assert group["lr"] == pytest.approx(0.001 * 16 / 512 * 3 / 8)


def test_bn_splits_turn_a_timm_models_batch_norms_into_split_ones():
    """Training-mode output of the split model = the plain model run on each half alone."""
    torch.manual_seed(0)
    plain = build_backbone("timm/resnet10t", bn_splits=1)
    split = build_backbone("timm/resnet10t", bn_splits=2)
    split.load_state_dict(plain.state_dict(), strict=True)  # same names, same state
    norms = [m for m in split.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(getattr(m, "num_splits", 1) == 2 for m in norms)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    expected = torch.cat([plain(x[:2]), plain(x[2:])])
    torch.testing.assert_close(split(x), expected)


def test_notes_print_as_one_line(monkeypatch):
    import warnings

    from contrastlab.app.cli import show_notes_as_lines

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    with warnings.catch_warnings():
        show_notes_as_lines()
        line = warnings.formatwarning("model.bn_splits set aside: x", Note, "f.py", 3)
        other = warnings.formatwarning("careful", UserWarning, "f.py", 3)
    assert line == "contrastlab: model.bn_splits set aside: x\n"
    assert other.startswith("f.py:3: UserWarning: careful")
