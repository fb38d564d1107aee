import torch
from torch import nn

from contrastlab.eval import knn_predict
from contrastlab.models import ResNetBackbone, SplitBatchNorm
from contrastlab.models.momentum import momentum_update
from contrastlab.schedules import cosine_with_warmup


def test_split_batchnorm_equals_batchnorm_per_group():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 3, 3) * 3 + 1
    split = SplitBatchNorm(4, num_splits=2)
    split.weight.data.uniform_(0.5, 1.5)
    split.bias.data.uniform_(-1, 1)
    references = [nn.BatchNorm2d(4) for _ in range(2)]
    for ref in references:
        ref.load_state_dict({k: v for k, v in split.state_dict().items()})
    out = split(x)
    expected = torch.cat([ref(chunk) for ref, chunk in zip(references, x.chunk(2), strict=True)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    mean_running = (references[0].running_mean + references[1].running_mean) / 2
    torch.testing.assert_close(split.running_mean, mean_running)
    split.eval()
    plain = nn.BatchNorm2d(4).eval()
    plain.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x), plain(x))


def test_split_batchnorm_rejects_groups_without_statistics():
    import pytest

    bn = SplitBatchNorm(4, num_splits=4)
    with pytest.raises(ValueError, match="cannot form 4 groups"):
        bn(torch.randn(4, 4, 1, 1))  # one value per channel per group
    with pytest.raises(ValueError, match="divisible by model.bn_splits"):
        bn(torch.randn(6, 4, 3, 3))
    assert bn(torch.randn(8, 4, 1, 1)).shape == (8, 4, 1, 1)


def test_cifar_stem_keeps_resolution_and_feature_dim():
    net = ResNetBackbone("resnet18", cifar_stem=True)
    assert net.feature_map(torch.randn(2, 3, 16, 16)).shape == (2, 512, 2, 2)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 512)
    plain = ResNetBackbone("resnet18", cifar_stem=False)
    assert plain.feature_map(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_backbone_weights_load_into_torchvision():
    import torchvision

    net = ResNetBackbone("resnet18", cifar_stem=False, bn_splits=4)
    reference = torchvision.models.resnet18()
    reference.fc = nn.Identity()
    reference.load_state_dict(net.net.state_dict(), strict=True)
    net.eval(), reference.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x), reference(x))


def test_momentum_update_formula():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = target.weight.detach().clone()
    momentum_update(online, target, 0.9)
    torch.testing.assert_close(target.weight, 0.9 * before + 0.1 * online.weight.detach())


def test_cosine_schedule():
    assert cosine_with_warmup(0, 100, 0) == 1.0
    assert abs(cosine_with_warmup(50, 100, 0) - 0.5) < 1e-12
    assert cosine_with_warmup(100, 100, 0) == 0.0
    assert cosine_with_warmup(0, 100, 10) == 0.1 and cosine_with_warmup(9, 100, 10) == 1.0


def test_knn_matches_slow_reference():
    torch.manual_seed(0)
    bank = nn.functional.normalize(torch.randn(50, 5), dim=1)
    labels = torch.randint(0, 3, (50,))
    queries = nn.functional.normalize(torch.randn(7, 5), dim=1)
    k, t = 6, 0.1
    scores = knn_predict(queries, bank, labels, 3, k, t, chunk=3)
    for i, q in enumerate(queries):
        sims = [(float(q @ b), int(y)) for b, y in zip(bank, labels, strict=True)]
        top = sorted(sims, reverse=True)[:k]
        expected = torch.zeros(3)
        for sim, y in top:
            expected[y] += torch.exp(torch.tensor(sim / t))
        torch.testing.assert_close(scores[i], expected, rtol=1e-5, atol=1e-5)


def test_a_head_built_under_a_seed_has_the_weights_of_the_same_layers_built_in_order():
    """Adding an optional output BatchNorm must not change what a seed gives: the layers are
    built first to last, so runs from before and after start alike."""
    from contrastlab.models.heads import mlp_head

    torch.manual_seed(0)
    ours = mlp_head(8, 16, 4, batch_norm=True)
    torch.manual_seed(0)
    reference = nn.Sequential(
        nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)
    )
    for mine, theirs in zip(
        ours.state_dict().values(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(mine, theirs)
