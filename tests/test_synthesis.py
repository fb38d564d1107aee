"""SynCo's six kinds and MoCHi: geometry of each kind, pool, masking, exact fast logits."""

import pytest
import torch
from conftest import TEST_DEVICE
from torch.nn import functional as F

from contrastlab.negatives import KINDS, SyntheticNegatives

ONLY = {kind: {k: (8 if k == kind else 0) for k in KINDS} for kind in KINDS}


def unit(*shape, seed=0):
    """Seeded unit vectors on the test device (the same values on every device)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return F.normalize(x.to(TEST_DEVICE), dim=-1)


def setup(batch=4, bank_size=60, dim=16, seed=0):
    q = unit(batch, dim, seed=seed).requires_grad_(True)
    bank = unit(bank_size, dim, seed=seed + 1)
    return q, bank


def gen(seed=0):
    """The synthetics' generator, on the device they are drawn on."""
    return torch.Generator(TEST_DEVICE).manual_seed(seed)


@pytest.mark.parametrize("counts", [ONLY[k] for k in KINDS] + [{}], ids=[*KINDS, "all"])
def test_fast_logits_and_gradients_match_materialised(counts):
    synth = SyntheticNegatives(n_hard=20, sigma=0.05, delta=0.1, eta=0.05, **counts)
    q, bank = setup()
    fast = synth(q, bank, generator=gen())
    vectors = synth.materialize(q, bank, generator=gen())
    reference = (vectors * q[:, None]).sum(-1)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
    weights = torch.randn_like(fast)
    (grad_fast,) = torch.autograd.grad((fast * weights).sum(), q)
    (grad_ref,) = torch.autograd.grad((reference * weights).sum(), q)
    torch.testing.assert_close(grad_fast, grad_ref, atol=1e-5, rtol=0)
    # each synthetic is a constant: the gradient of q . s is s itself
    torch.testing.assert_close(grad_ref, (weights[..., None] * vectors).sum(1), atol=1e-5, rtol=0)


def test_layout_counts_and_presets():
    synco = SyntheticNegatives.synco()
    assert synco.layout == [
        ("interpolated", 256),
        ("extrapolated", 256),
        ("mixup", 256),
        ("noise", 64),
        ("perturbed", 64),
        ("adversarial", 64),
    ]
    assert synco.total == 960 and synco.n_hard == 1024
    mochi = SyntheticNegatives.mochi(n_hard=256, s=512, s_prime=128)
    assert mochi.layout == [("interpolated", 128), ("mixup", 512)] and mochi.n_hard == 256
    q, bank = setup()
    for kind in KINDS:  # a zero count removes exactly that kind
        counts = {k: 3 for k in KINDS} | {kind: 0}
        out = SyntheticNegatives(n_hard=10, **counts)(q, bank, generator=gen())
        assert out.shape == (4, 15)
        assert kind not in SyntheticNegatives(n_hard=10, **counts).kinds_of_columns()
    assert SyntheticNegatives(n_hard=5, **{k: 0 for k in KINDS})(q, bank).shape == (4, 0)


def _pool(q, bank, n_hard, exclude=None):
    scores = (q @ bank.T).detach()
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    return scores.topk(n_hard, dim=1).indices


def _sources_of(vectors, bank):
    """For perturbed-kind vectors with tiny delta, the nearest bank row is the source."""
    return (vectors @ bank.T).argmax(-1)


def test_sources_come_from_the_top_n_pool_and_masking_removes_entries():
    q, bank = setup(bank_size=80)
    synth = SyntheticNegatives(n_hard=10, delta=1e-4, **(ONLY["perturbed"] | {"perturbed": 200}))
    sources = _sources_of(synth.materialize(q, bank, generator=gen()), bank)
    pool = _pool(q, bank, 10)
    for b in range(4):
        assert set(sources[b].tolist()) <= set(pool[b].tolist())
        assert len(set(sources[b].tolist())) >= 8  # uniform with replacement over 10
    exclude = torch.zeros(4, 80, dtype=torch.bool, device=TEST_DEVICE)
    exclude.scatter_(1, pool[:, :5], True)  # hide the 5 hardest
    masked = _sources_of(synth.materialize(q, bank, exclude=exclude, generator=gen()), bank)
    for b in range(4):
        assert not set(masked[b].tolist()) & set(pool[b, :5].tolist())
        assert set(masked[b].tolist()) <= set(_pool(q, bank, 10, exclude)[b].tolist())


def test_interpolated_and_extrapolated_lie_on_the_query_source_line():
    q, bank = setup()
    for kind, low, high in (("interpolated", 0.0, 0.5), ("extrapolated", 1.0, 1.5)):
        synth = SyntheticNegatives(n_hard=12, **(ONLY[kind] | {kind: 300}))
        s = synth.materialize(q, bank, generator=gen())
        qd = q.detach()[:, None, :].expand_as(s)
        # s = norm(x q + y n): solve the 2-D span for each synthetic's source n among the pool
        pool = bank[_pool(q, bank, 12)]  # (B, 12, d)
        best_residual, coeff = None, None
        for p in range(12):
            n = pool[:, p][:, None, :].expand_as(s)
            basis = torch.stack([qd, n], dim=-1)  # (B, k, d, 2)
            sol = torch.linalg.lstsq(basis, s[..., None]).solution[..., 0]
            residual = (basis @ sol[..., None])[..., 0].sub(s).norm(dim=-1)
            w = sol[..., 0] / sol.sum(-1)  # weight on q after undoing the normalisation
            if best_residual is None:
                best_residual, coeff = residual, w
            else:
                better = residual < best_residual
                best_residual = torch.where(better, residual, best_residual)
                coeff = torch.where(better, w, coeff)
        assert best_residual.max() < 1e-4  # in span(q, n) for a pool entry n
        a = coeff if kind == "interpolated" else 1 - coeff  # s ~ a q + (1-a) n ; b = 1 - w
        assert a.min() >= low - 1e-4 and a.max() <= high + 1e-4
        assert (a.max() - a.min()) > 0.6 * (high - low)  # spread over the range
    # interpolation moves towards q (harder), extrapolation away from it (easier)
    interp = SyntheticNegatives(n_hard=12, **ONLY["interpolated"])(q, bank, generator=gen())
    extrap = SyntheticNegatives(n_hard=12, **ONLY["extrapolated"])(q, bank, generator=gen())
    pool_logits = (q @ bank.T).detach().topk(12, dim=1).values
    assert (interp.detach().min(1).values >= pool_logits.min(1).values - 1e-5).all()
    assert (extrap.detach().max(1).values <= pool_logits.max(1).values + 1e-5).all()


def test_mixup_lies_between_two_pool_entries_with_g_uniform():
    q, bank = setup(bank_size=30)
    synth = SyntheticNegatives(n_hard=6, **(ONLY["mixup"] | {"mixup": 400}))
    s = synth.materialize(q, bank, generator=gen())
    pool = bank[_pool(q, bank, 6)]  # (B, 6, d)
    # every synthetic is a non-negative combination of pool entries (span of its two sources)
    coef = torch.linalg.lstsq(
        pool.transpose(1, 2)[:, None].expand(-1, 400, -1, -1), s[..., None]
    ).solution[..., 0]  # (B, 400, 6)
    recon = (coef[..., None] * pool[:, None]).sum(2)
    assert (recon - s).norm(dim=-1).max() < 1e-4
    assert (coef > -1e-4).all() and ((coef.abs() > 1e-4).sum(-1) <= 2).all()
    top2 = coef.topk(2, dim=-1).values
    g = top2[..., 0] / top2.sum(-1)  # the larger weight share lies in [0.5, 1]
    assert g.min() >= 0.5 - 1e-4 and g.max() <= 1 + 1e-4


def test_noise_scale_and_signed_step():
    q, bank = setup(dim=64)
    sigma = 0.01
    synth = SyntheticNegatives(n_hard=8, sigma=sigma, **(ONLY["noise"] | {"noise": 500}))
    s = synth.materialize(q, bank, generator=gen())
    pool = bank[_pool(q, bank, 8)]
    nearest = (s @ pool.transpose(1, 2)).argmax(-1)
    n = pool.gather(1, nearest[..., None].expand(-1, -1, 64))
    e = s * (n + 0).norm(dim=-1, keepdim=True) - n  # ~ e up to O(sigma^2) from normalising
    assert abs(e.std().item() - sigma) < 0.1 * sigma
    eta = 0.05
    adv = SyntheticNegatives(n_hard=8, eta=eta, **ONLY["adversarial"]).materialize(
        q, bank, generator=gen()
    )
    pool_best = (adv @ pool.transpose(1, 2)).argmax(-1)
    src = pool.gather(1, pool_best[..., None].expand(-1, -1, 64))
    step = adv * (src + eta * torch.sign(q.detach())[:, None]).norm(dim=-1, keepdim=True) - src
    torch.testing.assert_close(
        step, eta * torch.sign(q.detach())[:, None].expand_as(step), atol=1e-5, rtol=0
    )


def test_perturbed_is_a_gradient_step_on_q_dot_n():
    q, bank = setup()
    delta = 0.2
    synth = SyntheticNegatives(n_hard=5, delta=delta, **ONLY["perturbed"])
    s = synth.materialize(q, bank, generator=gen())
    pool = bank[_pool(q, bank, 5)]
    n = pool.gather(1, (s @ pool.transpose(1, 2)).argmax(-1)[..., None].expand(-1, -1, 16))
    n_var = n.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((q.detach()[:, None] * n_var).sum(), n_var)
    torch.testing.assert_close(s, F.normalize(n + delta * grad, dim=-1), atol=1e-6, rtol=0)


def test_bank_logits_argument_and_errors():
    q, bank = setup()
    synth = SyntheticNegatives(n_hard=10, **ONLY["interpolated"])
    given = synth(q, bank, bank_logits=q @ bank.T, generator=gen())
    torch.testing.assert_close(given, synth(q, bank, generator=gen()))
    with pytest.raises(ValueError, match=">= 0"):
        SyntheticNegatives(mixup=-1)
    with pytest.raises(ValueError, match=r"q \(B, d\) and bank \(M, d\)"):
        synth(q, bank[:, :5])


def test_moco_loss_includes_masked_synthetics_after_warmup():
    from contrastlab.methods import MoCoV2
    from contrastlab.negatives import infonce_logits, infonce_loss

    synth = SyntheticNegatives(n_hard=6, interpolated=3, mixup=2, adversarial=2)
    model = MoCoV2(queue_size=20, proj_dim=16, synthetic=synth, synthetic_warmup_epochs=0)
    model = model.to(TEST_DEVICE)
    model.queue.indices[:] = torch.arange(20)  # queue slot i holds image i
    q, _ = setup(batch=4, dim=16)
    k, negatives = unit(4, 16, seed=5), unit(20, 16, seed=6)
    indices = torch.tensor([0, 1, 2, 3], device=TEST_DEVICE)
    labels = torch.full((4,), -1, device=TEST_DEVICE)
    torch.manual_seed(7)
    loss = model._infonce(q, k, negatives, indices, labels, first=False)
    torch.manual_seed(7)
    same_image = indices[:, None] == torch.arange(20, device=TEST_DEVICE)[None, :]
    extra = synth(q, negatives, exclude=same_image)
    expected = infonce_loss(infonce_logits(q, k, negatives, extra), model.hparams.temperature)
    torch.testing.assert_close(loss, expected)
    plain = infonce_loss(infonce_logits(q, k, negatives), model.hparams.temperature)
    assert loss > plain  # extra negatives only add to the denominator
    model.hparams.synthetic_warmup_epochs = 5  # during warm-up: plain MoCo v2
    torch.testing.assert_close(model._infonce(q, k, negatives, indices, labels, False), plain)


# ------------------------------------------------------------ each kind's whole distribution


def one_sample_ks(values: torch.Tensor, cdf) -> float:
    """Largest gap between the empirical CDF of ``values`` and ``cdf``."""
    x = values.flatten().double().sort().values.cpu()
    n = len(x)
    theory = cdf(x)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - theory
    below = theory - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


def uniform_cdf(low: float, high: float):
    return lambda x: ((x - low) / (high - low)).clamp(0, 1)


COEFFICIENTS = [
    ("interpolated", "a", uniform_cdf(0.0, 0.5)),
    ("extrapolated", "b", uniform_cdf(1.0, 1.5)),
    ("mixup", "g", uniform_cdf(0.0, 1.0)),
]


def many_draws(kind: str, count: int = 2000, n_hard: int = 16, sigma: float = 0.01):
    q, bank = setup(batch=100, bank_size=64, dim=8)
    synth = SyntheticNegatives(n_hard=n_hard, sigma=sigma, **(ONLY[kind] | {kind: count}))
    _, draws = synth.prepare(q, bank, None, None, gen())
    return draws[kind]


@pytest.mark.parametrize(("kind", "name", "cdf"), COEFFICIENTS, ids=[c[0] for c in COEFFICIENTS])
def test_each_coefficient_follows_its_whole_distribution(kind, name, cdf):
    """200,000 draws against the SPEC's uniform law: the KS distance of a correct draw is about
    0.002; narrowing U(1, 1.5) to U(1, 1.4) moves it to 0.2, shifting it by 0.05 to 0.1."""
    assert one_sample_ks(many_draws(kind)[name], cdf) < 0.006


def test_noise_is_gaussian_with_sigma():
    sigma = 0.03
    e = many_draws("noise", count=250, sigma=sigma)["e"]  # 100 x 250 x 8 components
    normal = torch.distributions.Normal(0.0, sigma)
    assert one_sample_ks(e, lambda x: normal.cdf(x.float()).double()) < 0.006


@pytest.mark.parametrize("kind", KINDS)
def test_sources_are_uniform_over_the_pool(kind):
    """Every pool position equally likely (each of the 16 frequencies within 5 binomial standard
    deviations of 1/16), and mixup's two sources independent."""
    draws = many_draws(kind, count=250 if kind == "noise" else 2000)
    for picks in [draws["i"], *([draws["j"]] if kind == "mixup" else [])]:
        share = torch.bincount(picks.flatten().cpu(), minlength=16).double() / picks.numel()
        sd = (1 / 16 * 15 / 16 / picks.numel()) ** 0.5
        assert (share - 1 / 16).abs().max() < 5 * sd
    if kind == "mixup":
        same = (draws["i"] == draws["j"]).double().mean()
        assert abs(float(same) - 1 / 16) < 0.003
