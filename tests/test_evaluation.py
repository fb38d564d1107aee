"""Evaluation, export, transfer and reports from a checkpoint (tiny data, one short run)."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from conftest import QUIET_BATCHES_OF_16, write_cifar

from contrastlab.app.cli import main
from contrastlab.app.evaluate import Evaluation, knn_grid
from contrastlab.app.export import backbone_state_dict, detectron2_name, export_backbone
from contrastlab.app.report import (
    ResultsTable,
    curve_figure,
    differing_settings,
    embedding_figure,
    hardness_keys,
    hardness_title,
    knn_sizes_title,
    loss_keys,
    other_keys,
    pca_2d,
    read_run,
    run_header,
    write_report,
)
from contrastlab.eval import features as features_module
from contrastlab.eval.finetune import (
    balanced_subset,
    default_finetune_epochs,
    parse_label_amount,
    subset_from_list,
)
from contrastlab.eval.knn import knn_accuracy
from contrastlab.eval.linear import (
    FAST_PROBE_LRS,
    holdout_split,
    linear_on_features,
    topk_accuracy,
)
from contrastlab.methods import MoCoV2, SimCLR
from contrastlab.models.exported import faster_rcnn_from_export, timm_resnet, torchvision_resnet
from contrastlab.runs.records import read_rows
from contrastlab.runs.run_info import preset_and_options
from contrastlab.views.contrastive_crop import box_statistics

TINY_RUN = [
    "--model.augment.size",
    "16",
    *QUIET_BATCHES_OF_16,
    "--trainer.max_epochs",
    "2",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--model.crop.init_args.warmup_epochs",
    "1",
    "--model.crop.init_args.interval",
    "1",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One short SimCLR + ContrastiveCrop run on tiny CIFAR-format data, shared by the tests."""
    root = tmp_path_factory.mktemp("data")
    write_cifar(root, structured=True)
    out = tmp_path_factory.mktemp("runs") / "simclr_ccrop"
    config = ["--config", "cifar10/simclr_ccrop", "--data.root", str(root)]
    main(["fit", *config, "--trainer.default_root_dir", str(out), *TINY_RUN])
    return out


def checkpoint(run_dir: Path) -> str:
    return str(run_dir / "checkpoints" / "last.ckpt")


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random BN statistics, so an export that dropped or mixed them would show."""
    generator = torch.Generator().manual_seed(0)
    for name, buffer in model.named_buffers():
        if "running_mean" in name:
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
        elif "running_var" in name:
            buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model.eval()


# ---------------------------------------------------------------------------------- export


@pytest.mark.parametrize("cifar_stem", [True, False])
@pytest.mark.parametrize("target", ["torchvision", "timm"])
def test_export_loads_strictly_and_gives_the_same_features(tmp_path, cifar_stem, target):
    model = perturbed(MoCoV2(bn_splits=2, cifar_stem=cifar_stem, channels_last=False))
    out = export_backbone(model, target, tmp_path / "backbone.pth")
    builder = torchvision_resnet if target == "torchvision" else timm_resnet
    net = builder("resnet18", cifar_stem=cifar_stem)
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), model.backbone(x), atol=1e-5, rtol=1e-5)
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["arch"] == "resnet18" and meta["cifar_stem"] is cifar_stem


@pytest.mark.parametrize(
    ("target", "cifar_stem"), [("torchvision", True), ("timm", True), ("safetensors", False)]
)
def test_the_exports_own_load_lines_work_without_contrastlab(
    tmp_path, monkeypatch, cifar_stem, target
):
    """The lines the ``.json`` (and the end of ``fit``) print, run as a user runs them."""
    model = perturbed(MoCoV2(bn_splits=2, cifar_stem=cifar_stem, channels_last=False))
    out = export_backbone(model, target, tmp_path / f"backbone.{target}")
    snippet = json.loads(Path(f"{out}.json").read_text())["load"]
    assert "contrastlab" not in snippet
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(snippet, namespace)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        found = namespace["net"].eval()(x)
        torch.testing.assert_close(found, model.backbone(x), atol=1e-5, rtol=1e-5)


def test_export_of_imagenet_stem_loads_into_plain_torchvision(tmp_path):
    model = MoCoV2(bn_splits=1, cifar_stem=False)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    net.load_state_dict(backbone_state_dict(model), strict=True)


def test_detectron2_names_and_shapes(tmp_path):
    import torchvision.models as tvm

    model = MoCoV2(backbone="resnet50", bn_splits=1, cifar_stem=False, proj_hidden=64)
    out = export_backbone(model, "detectron2", tmp_path / "r50.pkl")
    with out.open("rb") as f:
        saved = pickle.load(f)
    weights = saved["model"]
    assert saved["matching_heuristics"] is True
    reference = {k: v.shape for k, v in tvm.resnet50().state_dict().items()}
    expected = {
        "stem.conv1.weight": reference["conv1.weight"],
        "stem.conv1.norm.running_var": reference["bn1.running_var"],
        "res2.0.conv1.weight": reference["layer1.0.conv1.weight"],
        "res2.0.conv3.norm.bias": reference["layer1.0.bn3.bias"],
        "res2.0.shortcut.weight": reference["layer1.0.downsample.0.weight"],
        "res3.0.shortcut.norm.running_mean": reference["layer2.0.downsample.1.running_mean"],
        "res5.2.conv2.norm.weight": reference["layer4.2.bn2.weight"],
    }
    for name, shape in expected.items():
        assert tuple(weights[name].shape) == tuple(shape), name
    assert not [k for k in weights if "num_batches_tracked" in k or k.startswith(("fc", "layer"))]
    n_tensors = len([k for k in reference if "num_batches_tracked" not in k and "fc." not in k])
    assert len(weights) == n_tensors
    assert detectron2_name("layer3.1.downsample.1.weight") == "res4.1.shortcut.norm.weight"


def test_export_cli(run_dir, tmp_path, capsys):
    out = tmp_path / "timm.pth"
    main(["export", "--checkpoint", checkpoint(run_dir), "--format", "timm", "--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    net = timm_resnet("resnet18", cifar_stem=True)
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_embed_cli_on_a_split_of_the_runs_dataset(run_dir, capsys):
    main(["embed", "--checkpoint", checkpoint(run_dir), "--split", "test", "--workers", "0"])
    out = run_dir / "embeddings" / "test"
    assert "wrote 20 embeddings of 512 dimensions" in capsys.readouterr().out
    rows = np.load(out / "embeddings.npy")
    evaluation = Evaluation.open(checkpoint(run_dir))
    features, _ = evaluation.features("test")  # the kNN's features of the same split
    np.testing.assert_allclose(rows, features.numpy(), rtol=1e-3, atol=1e-3)
    assert (out / "files.txt").read_text().splitlines()[:2] == ["cifar10/test/0", "cifar10/test/1"]
    with pytest.raises(SystemExit):  # neither a folder nor a split
        main(["embed", "--checkpoint", checkpoint(run_dir)])


# ---------------------------------------------------------------------------------- transfer


def test_faster_rcnn_from_export_trains_one_step(tmp_path):
    model = MoCoV2(bn_splits=1, cifar_stem=False, channels_last=False)
    out = export_backbone(model, "torchvision", tmp_path / "backbone.pth")
    detector = faster_rcnn_from_export(
        out, arch="resnet18", num_classes=3, min_size=64, max_size=64
    )
    body = detector.backbone.body.state_dict()
    torch.testing.assert_close(
        body["layer4.1.conv2.weight"], model.backbone.net.layer4[1].conv2.weight
    )
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=generator) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [0, 0, 20, 20]]),
            "labels": torch.tensor([2, 1]),
        },
    ]
    detector.train()
    losses = detector(images, targets)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert detector.backbone.body.layer4[0].conv1.weight.grad.abs().sum() > 0


def test_faster_rcnn_refuses_a_cifar_stem(tmp_path):
    out = export_backbone(MoCoV2(bn_splits=1), "torchvision", tmp_path / "cifar.pth")
    with pytest.raises(ValueError, match="CIFAR stem"):
        faster_rcnn_from_export(out, arch="resnet18")


# ---------------------------------------------------------------------------------- linear


def test_topk_accuracy_hand_computed():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    # row 0: top-1 hit; row 1: label 2 is 2nd; row 2: label 0 is 3rd
    assert topk_accuracy(logits, labels, (1, 2, 3)) == pytest.approx([100 / 3, 200 / 3, 100.0])


def test_linear_on_features_learns_separable_classes():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 3
    labels = torch.arange(4).repeat(50)
    features = centres[labels] + torch.randn(200, 16, generator=generator)
    result = linear_on_features((features, labels), (features, labels), 4, epochs=10, lr=0.1)
    assert result.top1 > 95 and result.top5 == 100
    assert result.best_top1 >= result.top1 and 1 <= result.best_epoch <= 10
    chance = linear_on_features(
        (features, labels[torch.randperm(200, generator=generator)]), (features, labels), 4, 5, 0.1
    )
    assert chance.top1 < 60  # shuffled training labels cannot be learnt into the true ones


def test_linear_cli_fast_and_paper_modes_and_the_feature_cache(run_dir, capsys, monkeypatch):
    main(["linear", "--checkpoint", checkpoint(run_dir), "--epochs", "3", "--lr", "0.1"])
    out = capsys.readouterr().out
    assert "linear probe (fast, 100 training and 20 evaluation images, lr 0.1, batch 256)" in out
    assert "last epoch of 3 top-1" in out and "best epoch" in out
    saved = json.loads((run_dir / "eval" / "linear_fast.json").read_text())
    assert saved["mode"] == "fast" and saved["epochs"] == 3 and 0 <= saved["top1"] <= 100
    assert saved["holdout_top1"] is None  # an lr given is not chosen
    cached = sorted((run_dir / "features").glob("*.pt"))
    assert len(cached) == 2  # training and evaluation splits

    def no_extraction(*args, **kwargs):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr(features_module, "extract_features", no_extraction)
    main(["linear", "--checkpoint", checkpoint(run_dir), "--epochs", "2", "--lr", "0.1"])
    monkeypatch.undo()
    main(["linear", "--checkpoint", checkpoint(run_dir), "--mode", "paper", "--epochs", "1"])
    assert "linear probe (paper, 100 training and 20 evaluation images, lr 10, batch 512)" in (
        capsys.readouterr().out
    )  # the ContrastiveCrop authors' CIFAR protocol
    saved = json.loads((run_dir / "eval" / "linear_paper.json").read_text())
    assert (saved["lr"], saved["batch_size"]) == (10.0, 512)


def test_fast_probe_lr_is_chosen_on_held_out_training_images(run_dir, capsys, monkeypatch):
    """Without --lr the fast probe trains each candidate on 90% of the training split and keeps
    the best on the other 10%: the evaluation split plays no part in the choice."""
    import contrastlab.app.evaluate as evaluate_module

    seen = []
    real = evaluate_module.choose_fast_lr

    def spy(train, *args, **kwargs):
        seen.append(train)
        return real(train, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "choose_fast_lr", spy)
    main(["linear", "--checkpoint", checkpoint(run_dir), "--epochs", "5"])
    out = capsys.readouterr().out
    saved = json.loads((run_dir / "eval" / "linear_fast.json").read_text())
    train = Evaluation.open(checkpoint(run_dir)).features("train")
    assert len(seen) == 1 and torch.equal(seen[0][0], train[0])  # only training features
    scores = saved["holdout_top1"]
    assert list(scores) == [str(lr) for lr in FAST_PROBE_LRS]
    best = max(FAST_PROBE_LRS, key=lambda lr: (scores[str(lr)], -lr))
    assert saved["lr"] == best and f"lr {best:g} (chosen on a held-out 10%" in out
    # the held-out scores are those of a classifier trained on the other 90%
    kept, held = holdout_split(len(train[1]))
    assert len(held) == 10 and not set(kept.tolist()) & set(held.tolist())
    again = linear_on_features(
        (train[0][kept], train[1][kept]), (train[0][held], train[1][held]), 10, 5, best
    )
    assert again.top1 == pytest.approx(scores[str(best)])


def test_feature_cache_key_changes_with_checkpoint_and_split(run_dir, tmp_path):
    evaluation = Evaluation.open(checkpoint(run_dir))
    test = evaluation.data.split_dataset("test")
    subset = evaluation.data.split_dataset("test", subset=10)
    path = evaluation.cache.path(test)
    assert path == evaluation.cache.path(evaluation.data.split_dataset("test"))
    assert path != evaluation.cache.path(subset)
    saved = torch.load(checkpoint(run_dir), weights_only=True)
    saved["state_dict"]["backbone.net.conv1.weight"] += 1e-3
    changed = tmp_path / "changed.ckpt"
    torch.save(saved, changed)
    assert Evaluation.open(changed).cache.path(test).name != path.name


# ---------------------------------------------------------------------------------- kNN


def test_knn_grid_equals_direct_computation(run_dir, capsys):
    main(["knn", "--checkpoint", checkpoint(run_dir), "--k", "5", "20", "--t", "0.1", "0.5"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("kNN")]
    assert len(lines) == 4
    evaluation = Evaluation.open(checkpoint(run_dir))
    bank, queries = evaluation.features("train"), evaluation.features("test")
    direct = knn_accuracy(queries[0], queries[1], bank[0], bank[1], 10, k=20, temperature=0.5)
    grid = {(k, t): v for k, t, v in knn_grid(checkpoint(run_dir), [20], [0.5]).rows}
    assert grid[(20, 0.5)] == pytest.approx(direct)
    assert "bank train 100 images, queries test 20 images" in lines[0]
    saved = json.loads((run_dir / "eval" / "knn.json").read_text())
    assert saved["results"] == [{"k": 20, "t": 0.5, "top1": grid[(20, 0.5)]}]
    assert saved["bank"] == {"split": "train", "images": 100}
    # any labelled split as the bank: the test split against itself (features computed in
    # reduced precision may tie, so the reference is the same computation, not 100%)
    self_bank = knn_grid(checkpoint(run_dir), [1], [0.1], bank_split="test", eval_split="test")
    itself = knn_accuracy(queries[0], queries[1], queries[0], queries[1], 10, k=1, temperature=0.1)
    assert self_bank.rows[0][2] == pytest.approx(itself)
    subset = knn_grid(checkpoint(run_dir), [5], [0.1], train_subset=40, eval_subset=10)
    assert subset.bank == ("train", 40) and subset.queries == ("test", 10)


# ---------------------------------------------------------------------------------- fine-tune


def test_balanced_subset_counts_and_seeds():
    labels = torch.arange(10).repeat_interleave(100)
    one_percent = balanced_subset(labels, parse_label_amount("1%"), seed=0)
    assert torch.equal(torch.bincount(labels[one_percent]), torch.ones(10, dtype=torch.long))
    ten = balanced_subset(labels, 0.1, seed=3)
    assert torch.equal(torch.bincount(labels[ten]), torch.full((10,), 10))
    counted = balanced_subset(labels, parse_label_amount("25"), seed=0)
    per_class = torch.bincount(labels[counted], minlength=10)
    assert len(counted) == 25 and per_class.min() == 2 and per_class.max() == 3
    assert torch.equal(ten, balanced_subset(labels, 0.1, seed=3))
    assert not torch.equal(ten, balanced_subset(labels, 0.1, seed=4))
    for bad in ("0%", "150%", "-3", "ten"):
        with pytest.raises(ValueError):
            parse_label_amount(bad)


def test_finetune_epochs_default_to_synco_and_subset_lists_name_images():
    assert (default_finetune_epochs("1%"), default_finetune_epochs("10%")) == (60, 30)
    assert default_finetune_epochs("500") == 30
    names = ["train/a/n01_1.JPEG", "train/a/n01_2.JPEG", "train/b/n02_7.JPEG"]
    chosen = subset_from_list(["n02_7.JPEG", "", " n01_1.JPEG ", "1"], names, 3, "f.txt")
    assert chosen.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"f.txt: 2 line\(s\) name no image.*: n03_1.JPEG, 7"):
        subset_from_list(["n03_1.JPEG", "7"], names, 3, "f.txt")
    with pytest.raises(ValueError, match="this dataset has no file names: list indices"):
        subset_from_list(["n01_1.JPEG"], None, 3, "f.txt")


def test_finetune_cli_reads_a_subset_list(run_dir, tmp_path, capsys):
    listed = tmp_path / "my_subset.txt"
    listed.write_text("3\n1\n4\n1\n5\n9\n")
    main(
        ["finetune", "--checkpoint", checkpoint(run_dir), "--labels", str(listed), "--epochs", "1"]
    )
    saved = json.loads((run_dir / "eval" / "finetune_my_subset.json").read_text())
    assert saved["labelled_indices"] == [1, 3, 4, 5, 9] and saved["epochs"] == 1


def test_finetune_cli_saves_result_and_label_indices(run_dir, capsys):
    main(["finetune", "--checkpoint", checkpoint(run_dir), "--labels", "20", "--epochs", "1"])
    assert "fine-tuned on 20 labels" in capsys.readouterr().out
    saved = json.loads((run_dir / "eval" / "finetune_20.json").read_text())
    indices = torch.tensor(saved["labelled_indices"])
    assert len(indices) == 20 and saved["labelled_images"] == 20
    labels = Evaluation.open(checkpoint(run_dir)).data.split_dataset("train").labels
    assert torch.bincount(labels[indices], minlength=10).tolist() == [2] * 10


# ---------------------------------------------------------------------------------- report


def test_report_of_one_run(run_dir):
    html_path = write_report([run_dir])
    page = html_path.read_text()
    names = ("loss.png", "lr.png", "knn.png", "embedding.png", f"crops_{run_dir.name}.png")
    for name in (*names, "ccrop_boxes.png", "rankme.png"):
        assert (run_dir / "report" / name).is_file(), name
        assert f"report/{name}" in page
    assert "final kNN top-1" in page
    _, rows = read_rows(run_dir / "metrics.csv")
    untrained = next(r for r in rows if r.get("knn/top1"))
    assert untrained["epoch"] == "-1"
    assert f"<td>{float(untrained['knn/top1']):.2f}%</td>" in page and "untrained kNN" in page
    assert "<td>100 / 20 / 100</td>" in page  # the kNN bank, queries and training set
    header = dict(run_header(read_run(run_dir)))  # what the run was, from run.json
    assert header["preset"].startswith("cifar10/simclr_ccrop: ")
    assert header["command"].startswith("contrastlab fit --config cifar10/simclr_ccrop --data.root")
    assert header["options after the preset"].startswith("--data.root ")
    assert header["versions"].startswith("contrastlab ") and "torch " in header["versions"]
    assert header["wall time"].endswith("epochs 2, steps 12") and "hardware" in header
    assert "<h2>Settings that differ" not in page  # one run
    assert knn_sizes_title([read_run(run_dir)]) == ", bank / queries / training set: 100 / 20 / 100"
    assert f"<th>{run_dir.name}</th><td>2</td>" in page  # epochs trained
    # the view grids: at the start and after the localisation before epoch 1 (6 steps an epoch)
    grids = sorted(p.name for p in (run_dir / "views").iterdir())
    assert grids == ["step_0000000.png", "step_0000006.png"]
    assert f"report/views_{run_dir.name}_0.png" in page
    assert f"report/views_{run_dir.name}_6.png" in page


def test_short_and_plain_runs_keep_their_curves_and_say_what_they_show(tmp_path):
    """A run that logged no step losses shows its epoch means; a plain MoCo run's hardness
    panel names the queue's negatives, a SynCo run's the synthetic ones too."""
    plain_rows = [{"epoch": e, "step": 3 + 4 * e, "train/loss_epoch": 5 - e} for e in range(3)]
    plain_rows += [{"epoch": 0, "step": 1, "hardness/positive": 0.5, "hardness/pool/mean": 0.2}]
    plain = read_run(write_metrics(tmp_path / "plain", plain_rows))
    assert plain.epochs == 3 and loss_keys([plain]) == ["train/loss_epoch"]
    assert "the queue's negatives" in hardness_title([plain])
    synco_rows = [{"epoch": 0, "step": 0, "train/loss_step": 4.0, "hardness/mixup/mean": 0.3}]
    synco = read_run(write_metrics(tmp_path / "synco", synco_rows))
    assert loss_keys([plain, synco]) == ["train/loss_step"]
    assert "real and synthetic negatives" in hardness_title([plain, synco])
    page = write_report([plain.path], tmp_path / "out", pictures=False).read_text()
    assert "report/loss.png" in page and "<td>3</td>" in page


def test_settings_that_differ_between_runs(tmp_path):
    rows = [{"epoch": 0, "step": 0, "train/loss_step": 1.0}]
    for name, lr, batch in (("a", 0.1, 64), ("b", 0.2, 64)):
        write_metrics(tmp_path / name, rows)
        config = {
            "model": {"init_args": {"lr": lr, "queue_size": 4096}},
            "data": {"batch_size": batch},
        }
        config["trainer"] = {"default_root_dir": f"runs/{name}"}  # always differs: left out
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(config))
    table = differing_settings([read_run(tmp_path / "a"), read_run(tmp_path / "b")])
    assert table.columns == ["a", "b"] and table.rows == [("model.init_args.lr", ["0.1", "0.2"])]
    assert differing_settings([read_run(tmp_path / "a")]) is None


def test_preset_and_options_of_a_command():
    presets = {"cifar10/mocov2": "cifar10/mocov2", "/x/cifar10/mocov2.yaml": "cifar10/mocov2"}
    given = ["--config", "cifar10/mocov2", "--model.lr", "0.1", "--config=mine.yaml"]
    assert preset_and_options(given, presets) == (
        "cifar10/mocov2",
        ["--model.lr", "0.1", "--config", "mine.yaml"],
    )


def test_results_table_for_papers_in_markdown_and_latex():
    table = ResultsTable(["kNN top-1", "RankMe"], [("mocov2_synco", ["35.40%", "65.9 -> 120.4"])])
    assert table.markdown() == (
        "| run | kNN top-1 | RankMe |\n|---|---|---|\n| mocov2_synco | 35.40% | 65.9 -> 120.4 |\n"
    )
    assert table.latex().splitlines() == [
        r"\begin{tabular}{lrr}",
        r"\toprule",
        r"run & kNN top-1 & RankMe \\",
        r"\midrule",
        r"mocov2\_synco & 35.40\% & 65.9 $\rightarrow$ 120.4 \\",
        r"\bottomrule",
        r"\end{tabular}",
    ]


def test_report_figures_for_papers(tmp_path):
    rows = [{"epoch": 0, "step": s, "train/loss_step": 5 - s, "train/lr": 0.1} for s in range(4)]
    run = write_metrics(tmp_path / "run", rows)
    write_report([run], tmp_path / "out", pictures=False, figures=tmp_path / "figs")
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["loss.pdf", "loss.svg", "lr.pdf", "lr.svg", "results.md", "results.tex"]
    assert "<text" in (tmp_path / "figs" / "loss.svg").read_text()  # text stays text
    pdf = (tmp_path / "figs" / "loss.pdf").read_bytes()
    # fonts embedded as TrueType (a CID-keyed TrueType font), not as Type 3 glyph procedures
    assert b"/CIDFontType2" in pdf and b"/Type3" not in pdf
    assert "| run | epochs |" in (tmp_path / "figs" / "results.md").read_text()


def test_no_logged_curve_is_left_out_of_the_report(tmp_path):
    rows = [{"epoch": 0, "step": 1, "train/loss_step": 2.0, "train/positive_logit": 0.4}]
    rows += [{"epoch": 0, "step": 1, "hardness/pool/q90": 0.3, "knn/bank_images": 100}]
    rows += [{"epoch": 1, "step": 3, "ccrop/box_area_mean": 0.6, "train/images_per_sec": 50}]
    run = read_run(write_metrics(tmp_path / "run", rows))
    shown = {"train/loss_step", *hardness_keys([run])}
    assert other_keys([run], shown) == [
        "hardness/pool/q90",
        "train/images_per_sec",
        "train/positive_logit",
    ]
    page = write_report([run.path], tmp_path / "out", pictures=False).read_text()
    assert "report/other.png" in page and "report/ccrop_boxes.png" in page


def test_box_statistics_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.25, 0.25, 0.75, 0.75], [0.0, 0.5, 0.5, 1.0]])
    stats = box_statistics(boxes)  # areas 1, 0.25, 0.25
    assert stats["ccrop/box_area_mean"] == pytest.approx(0.5)
    assert stats["ccrop/whole_image_share"] == pytest.approx(1 / 3)
    assert stats["ccrop/box_area_q10"] == pytest.approx(0.25)
    assert stats["ccrop/box_area_q90"] == pytest.approx(0.25 + 0.8 * 0.75)  # linear quantile


def test_the_embedding_legend_names_the_classes():
    features, labels = torch.randn(40, 8), torch.arange(40) % 3
    figure = embedding_figure([("run", features, labels, ["cat", "dog", "ship"])])
    assert [t.get_text() for t in figure.axes[0].get_legend().texts] == ["cat", "dog", "ship"]


def write_metrics(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True)
    keys = sorted({k for row in rows for k in row})
    lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys) for row in rows]
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    return path


def test_report_compares_runs_on_shared_axes_with_hardness(tmp_path):
    rows = [
        {"epoch": 0, "step": s, "train/loss_step": 5 - s, "hardness/positive": 0.5 + s / 10}
        | {"hardness/pool/mean": 0.2, "hardness/mixup/mean": 0.3}
        for s in range(4)
    ]
    synco = write_metrics(tmp_path / "synco", rows)
    plain = write_metrics(tmp_path / "plain", [{"epoch": 0, "step": 0, "train/loss_step": 4.0}])
    runs = [read_run(synco), read_run(plain)]
    assert hardness_keys(runs)[:2] == ["hardness/positive", "hardness/mixup/mean"]
    figure = curve_figure(runs, ["train/loss_step"], "loss", "step")
    (axis,) = figure.axes
    assert len(axis.lines) == 2 and [t.get_text() for t in figure.legends[0].texts] == [
        "synco",
        "plain",
    ]
    page = write_report([synco, plain], tmp_path / "compare").read_text()
    assert "report/hardness.png" in page and "report/loss.png" in page
    assert "no checkpoints/last.ckpt" in page


def test_pca_2d_finds_the_spread_direction():
    generator = torch.Generator().manual_seed(0)
    side = torch.arange(100) % 2 * 2 - 1  # two groups at +-0.5 on axis 1, equal norms
    base = torch.zeros(100, 5)
    base[:, 0] = 1.0
    base[:, 1] = 0.5 * side
    base[:, 2:] = 0.01 * torch.randn(100, 3, generator=generator)
    points = pca_2d(base)
    assert points[:, 0].var() > 100 * points[:, 1].var()
    assert (torch.sign(points[:, 0]) * torch.sign(points[0, 0]) == side * side[0]).all()


def test_simclr_checkpoint_rebuilds_for_evaluation(run_dir):
    assert isinstance(Evaluation.open(checkpoint(run_dir)).model, SimCLR)
