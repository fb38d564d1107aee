"""Synthetic hard negatives: SynCo's six kinds, with MoCHi as a preset (SPEC.md sections 2-3).

For each query ``q`` the pool is the ``n_hard`` bank entries with the largest ``q . n``
(detached top-N). Each synthetic draws its source(s) uniformly with replacement from the pool,
independently per query and per kind, and is a detached unit vector ``s``; its logit ``q . s``
carries gradient into ``q`` only. Kinds, in column order (:attr:`SyntheticNegatives.layout`):

1. interpolated  ``s = norm(a sg(q) + (1 - a) n)``,   ``a ~ U(0, 0.5)``
2. extrapolated  ``s = norm(sg(q) + b (n - sg(q)))``, ``b ~ U(1, 1.5)``
3. mixup         ``s = norm(g n_i + (1 - g) n_j)``,   ``g ~ U(0, 1)``
4. noise         ``s = norm(n + e)``,                 ``e ~ N(0, sigma^2 I)``
5. perturbed     ``s = norm(n + delta sg(q))``        (a gradient step on ``q . n``)
6. adversarial   ``s = norm(n + eta sign(sg(q)))``

Each kind is one class below (:class:`Interpolated` ... :class:`Adversarial`, in
:data:`KIND_RULES`) holding, side by side, its coefficient draw, its reference vector and its
closed-form logit. :meth:`SyntheticNegatives.__call__` computes the logits without building
``(B, n_syn, d)``
tensors: with ``c = q . n`` (the bank logits, carrying gradient) and ``q . sg(q)`` (value 1,
gradient ``sg(q)``), kinds 1, 2 and 5 are ratios whose norms follow from ``c`` alone, e.g.
``||a q + (1 - a) n||^2 = a^2 + (1 - a)^2 + 2 a (1 - a) c``; kinds 3 and 6 need one detached dot
product per synthetic (``n_i . n_j``, ``n . sign(q)``); only kind 4 draws a ``d``-dimensional
noise vector per synthetic. :meth:`SyntheticNegatives.materialize` builds the vectors
themselves from the same draws and is the reference the fast path is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Pool:
    """The hard pool of each query: bank rows ``index (B, N)`` and their logits ``logits (B, N)``
    (``q . n``, with gradient into ``q`` when the bank logits had it)."""

    index: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class Draw:
    """The random draws of one batch: pool positions and coefficients from one generator."""

    batch: int
    dim: int
    pool_size: int
    device: torch.device
    generator: torch.Generator | None

    def pick(self, count: int) -> torch.Tensor:
        """Pool positions ``(B, count)``, uniform with replacement."""
        shape = (self.batch, count)
        return torch.randint(0, self.pool_size, shape, generator=self.generator, device=self.device)

    def uniform(self, count: int, low: float, high: float) -> torch.Tensor:
        """``U(low, high)`` coefficients ``(B, count)``."""
        u = torch.rand(self.batch, count, generator=self.generator, device=self.device)
        return low + (high - low) * u

    def normal(self, count: int, std: float) -> torch.Tensor:
        """``N(0, std^2 I)`` vectors ``(B, count, d)``."""
        e = torch.randn(self.batch, count, self.dim, generator=self.generator, device=self.device)
        return e * std


@dataclass(frozen=True)
class Batch:
    """What every kind's logit and vector are computed from: the queries ``q`` (with
    gradient), ``q_self = q . sg(q)`` (value 1, gradient ``sg(q)``), the hard pool and the
    bank, and the step sizes of kinds 4-6."""

    q: torch.Tensor
    q_self: torch.Tensor
    pool: Pool
    bank: torch.Tensor
    sigma: float
    delta: float
    eta: float

    def logit(self, picks: torch.Tensor) -> torch.Tensor:
        """``q . n`` of the sources at pool positions ``picks``, with gradient into ``q``."""
        return self.pool.logits.gather(1, picks)

    def source(self, picks: torch.Tensor) -> torch.Tensor:
        """Detached source vectors ``(B, k, d)`` at pool positions ``picks (B, k)``."""
        return self.bank.detach()[self.pool.index.gather(1, picks)]

    @property
    def q_bar(self) -> torch.Tensor:
        """``sg(q)`` as ``(B, 1, d)``."""
        return self.q.detach()[:, None, :]


def two_point(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """``q . norm(w u + (1 - w) v)`` for unit ``u``, ``v`` with ``x = q . u``, ``y = q . v``: the
    numerator carries their gradients; the norm uses the detached ``xy = u . v``."""
    norm2 = w**2 + (1 - w) ** 2 + 2 * w * (1 - w) * xy.detach()
    return (w * x + (1 - w) * y) / norm2.clamp_min(1e-12).sqrt()


class Interpolated:
    """1. ``s = norm(a sg(q) + (1 - a) n)``, ``a ~ U(0, 0.5)``: towards the query (harder)."""

    def draw(self, draw: Draw, count: int, b: Batch) -> dict[str, torch.Tensor]:
        return {"i": draw.pick(count), "a": draw.uniform(count, 0.0, 0.5)}

    def vector(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        a = d["a"][..., None]
        return a * b.q_bar + (1 - a) * b.source(d["i"])

    def logit(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        c = b.logit(d["i"])  # ||a q + (1 - a) n||^2 = a^2 + (1 - a)^2 + 2 a (1 - a) c
        return two_point(b.q_self, c, d["a"], c)


class Extrapolated:
    """2. ``s = norm(sg(q) + b (n - sg(q)))``, ``b ~ U(1, 1.5)``: beyond the source (easier)."""

    def draw(self, draw: Draw, count: int, b: Batch) -> dict[str, torch.Tensor]:
        return {"i": draw.pick(count), "b": draw.uniform(count, 1.0, 1.5)}

    def vector(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        return b.q_bar + d["b"][..., None] * (b.source(d["i"]) - b.q_bar)

    def logit(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        c = b.logit(d["i"])  # the interpolation's formula with weight 1 - b on the query
        return two_point(b.q_self, c, 1 - d["b"], c)


class Mixup:
    """3. ``s = norm(g n_i + (1 - g) n_j)``, ``g ~ U(0, 1)``: two pool entries mixed (MoCHi)."""

    def draw(self, draw: Draw, count: int, b: Batch) -> dict[str, torch.Tensor]:
        return {"i": draw.pick(count), "j": draw.pick(count), "g": draw.uniform(count, 0.0, 1.0)}

    def vector(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        g = d["g"][..., None]
        return g * b.source(d["i"]) + (1 - g) * b.source(d["j"])

    def logit(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        n_i, n_j = b.source(d["i"]), b.source(d["j"])  # one detached n_i . n_j per synthetic
        return two_point(b.logit(d["i"]), b.logit(d["j"]), d["g"], (n_i * n_j).sum(-1))


class Noise:
    """4. ``s = norm(n + e)``, ``e ~ N(0, sigma^2 I)``."""

    def draw(self, draw: Draw, count: int, b: Batch) -> dict[str, torch.Tensor]:
        e = draw.normal(count, b.sigma)  # drawn before the sources (the order draws are taken)
        return {"i": draw.pick(count), "e": e}

    def vector(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        return b.source(d["i"]) + d["e"]

    def logit(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        e, n = d["e"], b.source(d["i"])
        norm2 = 1 + 2 * (n * e).sum(-1) + (e * e).sum(-1)
        return (b.logit(d["i"]) + torch.einsum("bd,bkd->bk", b.q, e)) / norm2.sqrt()


class Perturbed:
    """5. ``s = norm(n + delta sg(q))``: a gradient step on ``q . n`` (its gradient in ``n``)."""

    def draw(self, draw: Draw, count: int, b: Batch) -> dict[str, torch.Tensor]:
        return {"i": draw.pick(count)}

    def vector(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        return b.source(d["i"]) + b.delta * b.q_bar

    def logit(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        c = b.logit(d["i"])
        norm2 = 1 + b.delta**2 * b.q_self.detach() + 2 * b.delta * c.detach()
        return (c + b.delta * b.q_self) / norm2.sqrt()


class Adversarial:
    """6. ``s = norm(n + eta sign(sg(q)))``: a signed (FGSM) step towards the query."""

    def draw(self, draw: Draw, count: int, b: Batch) -> dict[str, torch.Tensor]:
        return {"i": draw.pick(count)}

    def vector(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        return b.source(d["i"]) + b.eta * torch.sign(b.q_bar)

    def logit(self, b: Batch, d: dict[str, torch.Tensor]) -> torch.Tensor:
        sign = torch.sign(b.q.detach())
        n_sign = torch.einsum("bkd,bd->bk", b.source(d["i"]), sign)  # one dot per synthetic
        norm2 = 1 + 2 * b.eta * n_sign + b.eta**2 * (sign * sign).sum(1, keepdim=True)
        return (b.logit(d["i"]) + b.eta * (b.q * sign).sum(1, keepdim=True)) / norm2.sqrt()


KIND_RULES = {
    "interpolated": Interpolated(),
    "extrapolated": Extrapolated(),
    "mixup": Mixup(),
    "noise": Noise(),
    "perturbed": Perturbed(),
    "adversarial": Adversarial(),
}
"""Each kind's draw, reference vector and closed-form logit, in column order."""
KINDS = tuple(KIND_RULES)


class SyntheticNegatives:
    """SynCo's synthetic hard negatives as a plain-PyTorch callable (see the module docstring).

    Every count may be 0, which removes exactly that kind. ``__call__`` returns ``(B, n_syn)``
    logits ``q . s``; ``materialize`` returns the ``(B, n_syn, d)`` unit vectors ``s``. With
    the same generator state both consume the same random draws, so ``synth(q, bank,
    generator=g1)`` equals ``(synth.materialize(q, bank, generator=g2) * q[:, None]).sum(-1)``
    when ``g1`` and ``g2`` start in the same state.
    """

    def __init__(
        self,
        n_hard: int = 1024,
        interpolated: int = 256,
        extrapolated: int = 256,
        mixup: int = 256,
        noise: int = 64,
        perturbed: int = 64,
        adversarial: int = 64,
        sigma: float = 0.01,
        delta: float = 0.01,
        eta: float = 0.01,
    ) -> None:
        counts = dict(
            interpolated=interpolated,
            extrapolated=extrapolated,
            mixup=mixup,
            noise=noise,
            perturbed=perturbed,
            adversarial=adversarial,
        )
        for name, value in {"n_hard": n_hard, **counts}.items():
            if value < 0:
                raise ValueError(f"SyntheticNegatives.{name} must be >= 0, got {value}")
        for name, value in {"sigma": sigma, "delta": delta, "eta": eta}.items():
            if not value >= 0:
                raise ValueError(f"SyntheticNegatives.{name} must be >= 0, got {value}")
        if n_hard == 0 and any(counts.values()):
            raise ValueError("SyntheticNegatives needs n_hard >= 1 to make synthetics")
        self.n_hard, self.counts = n_hard, counts
        self.sigma, self.delta, self.eta = sigma, delta, eta

    @classmethod
    def synco(cls, **overrides) -> SyntheticNegatives:
        """The SynCo paper's defaults: N=1024; 256 each of kinds 1-3, 64 each of kinds 4-6."""
        return cls(**overrides)

    @classmethod
    def mochi(cls, n_hard: int = 1024, s: int = 512, s_prime: int = 256) -> SyntheticNegatives:
        """MoCHi (N, s, s'): ``s`` mixup and ``s'`` query-interpolated synthetics."""
        return cls(
            n_hard=n_hard,
            interpolated=s_prime,
            extrapolated=0,
            mixup=s,
            noise=0,
            perturbed=0,
            adversarial=0,
        )

    def config(self) -> dict[str, float | int]:
        """Constructor arguments as plain values (for checkpoints and logs)."""
        return {
            "n_hard": self.n_hard,
            **self.counts,
            "sigma": self.sigma,
            "delta": self.delta,
            "eta": self.eta,
        }

    @property
    def layout(self) -> list[tuple[str, int]]:
        """``[(kind, count), ...]`` of the kinds in use, in column order."""
        return [(kind, self.counts[kind]) for kind in KINDS if self.counts[kind] > 0]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k}={c}" for k, c in self.layout)
        return f"SyntheticNegatives(n_hard={self.n_hard}, {kinds})"

    # ------------------------------------------------------------------ shared draws

    def hard_pool(
        self,
        q: torch.Tensor,
        bank: torch.Tensor,
        bank_logits: torch.Tensor | None,
        exclude: torch.Tensor | None,
    ) -> Pool:
        """Top-``n_hard`` of ``q . bank`` per query (detached selection; ``exclude`` (B, M) bool
        marks entries that may not enter the pool, e.g. keys of the query's own image)."""
        logits = q @ bank.T if bank_logits is None else bank_logits
        scores = logits.detach()
        if exclude is not None:
            scores = scores.masked_fill(exclude, float("-inf"))
        available = bank.shape[0]
        if exclude is not None:  # every row keeps the same pool size, all of it allowed
            available -= int(exclude.sum(dim=1).max())
        if available < 1:
            raise ValueError("every bank entry is excluded for some query: no hard pool")
        top = scores.topk(min(self.n_hard, available), dim=1).indices
        return Pool(top, logits.gather(1, top))

    def draws(
        self, b: Batch, generator: torch.Generator | None
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Every random quantity, kind by kind in column order (so both paths consume the
        generator identically): each kind's source positions in the pool and coefficients."""
        q = b.q
        draw = Draw(len(q), q.shape[1], b.pool.index.shape[1], q.device, generator)
        return {kind: KIND_RULES[kind].draw(draw, count, b) for kind, count in self.layout}

    def prepare(
        self,
        q: torch.Tensor,
        bank: torch.Tensor,
        bank_logits: torch.Tensor | None,
        exclude: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Batch, dict[str, dict[str, torch.Tensor]]]:
        """The hard pool and every random draw of one call: what :meth:`__call__` and
        :meth:`materialize` compute from (``draws[kind]``: ``i`` (and ``j``) pool positions
        ``(B, count)``, and the kind's coefficients ``a``, ``b``, ``g`` or noise ``e``)."""
        if q.ndim != 2 or bank.ndim != 2 or q.shape[1] != bank.shape[1]:
            raise ValueError(
                f"need q (B, d) and bank (M, d), got {tuple(q.shape)} and {tuple(bank.shape)}"
            )
        pool = self.hard_pool(q, bank, bank_logits, exclude)
        q_self = (q * q.detach()).sum(1, keepdim=True)  # value ||q||^2 = 1, gradient sg(q)
        b = Batch(q, q_self, pool, bank, self.sigma, self.delta, self.eta)
        return b, self.draws(b, generator)

    # ------------------------------------------------------------------ fast logits

    def __call__(
        self,
        q: torch.Tensor,
        bank: torch.Tensor,
        bank_logits: torch.Tensor | None = None,
        exclude: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(B, n_syn)`` logits ``q . s`` of every synthetic, gradient into ``q`` only."""
        if self.total == 0:
            return q.new_zeros(len(q), 0)
        b, draws = self.prepare(q, bank, bank_logits, exclude, generator)
        return torch.cat([KIND_RULES[kind].logit(b, draws[kind]) for kind, _ in self.layout], 1)

    # ------------------------------------------------------------------ reference vectors

    def materialize(
        self,
        q: torch.Tensor,
        bank: torch.Tensor,
        bank_logits: torch.Tensor | None = None,
        exclude: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(B, n_syn, d)`` detached unit synthetic vectors, straight from the equations."""
        if self.total == 0:
            return q.new_zeros(len(q), 0, q.shape[1])
        b, draws = self.prepare(q, bank, bank_logits, exclude, generator)
        vectors = [KIND_RULES[kind].vector(b, draws[kind]) for kind, _ in self.layout]
        return F.normalize(torch.cat(vectors, dim=1), dim=-1).detach()

    def kinds_of_columns(self) -> list[str]:
        """The kind of every output column, in order."""
        return [kind for kind, count in self.layout for _ in range(count)]
