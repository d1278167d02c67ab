"""Distribution metrics on the judge's features: FID, KID (torchmetrics with a custom feature extractor) and
precision / recall (Kynkäänniemi et al. 2019, k-NN manifolds; our own code).

The features are the judge's 64-d pooled bottleneck (``Judge.features``): the numbers rank models on ShapesWorld
and are NOT comparable to Inception-based FIDs in papers. Small sets bias FID upward (and make its covariance
singular below ``feature_dim + 1`` samples), so ``DistributionMetrics`` warns with the numbers when a set is
smaller than ``MIN_SAMPLES`` of a metric; compare FIDs only at equal set sizes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LDMError
from .judge import Judge

# below these set sizes a metric is unreliable (FID: 2 x the 64 feature dims; KID: its subset size)
MIN_SAMPLES = {"fid": 128, "kid": 50, "precision_recall": 100}


class JudgeFeatures(nn.Module):
    """torchmetrics feature extractor: (B, 3, H, W) float in [0, 1] (``normalize=True``) → (B, 64) float64."""

    def __init__(self, judge: Judge) -> None:
        super().__init__()
        self.judge = judge
        self.num_features = judge.net.config.channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.judge.features(x.float() * 2.0 - 1.0)


def knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """(N, D) → (N,) distance of each point to its k-th nearest other point."""
    d = torch.cdist(feats, feats)  # (N, N)
    return d.kthvalue(k + 1, dim=1).values  # k + 1: the point itself is at distance 0


def manifold_coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> float:
    """Fraction of ``queries`` inside the union of balls (manifold[i], radii[i])."""
    d = torch.cdist(queries, manifold)  # (Q, N)
    return float((d <= radii[None, :]).any(dim=1).double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision (fakes inside the real manifold) and recall (reals inside the fake manifold)."""
    if min(real.shape[0], fake.shape[0]) <= k:
        raise LDMError(f"precision/recall with k={k} needs more than {k} real and fake samples, "
                       f"got {real.shape[0]} real and {fake.shape[0]} fake")
    real, fake = real.double(), fake.double()
    precision = manifold_coverage(real, knn_radii(real, k), fake)
    recall = manifold_coverage(fake, knn_radii(fake, k), real)
    return precision, recall


@dataclass
class DistributionMetrics:
    """Real statistics computed once; ``score(fake)`` per generated set. Images (N, 3, H, W) in [-1, 1]."""

    judge: Judge
    real: torch.Tensor
    k: int = 3
    kid_subsets: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self._extractor = JudgeFeatures(self.judge)
        self._fid = FrechetInceptionDistance(feature=self._extractor, normalize=True, reset_real_features=False)
        self._fid.update(_unit(self.real), real=True)
        self._real_feats = self.judge.features(self.real)

    def score(self, fake: torch.Tensor, *, warn: bool = True) -> dict[str, float]:
        from torchmetrics.image.kid import KernelInceptionDistance

        n_real, n_fake = self.real.shape[0], fake.shape[0]
        if min(n_real, n_fake) < 2:
            raise LDMError(f"FID needs at least 2 real and 2 generated images, got {n_real} real, {n_fake} generated")
        if warn:
            warn_small_sets(n_real, n_fake)
        self._fid.reset()  # keeps the real statistics (reset_real_features=False)
        self._fid.update(_unit(fake), real=False)
        subset = min(1000, n_real, n_fake)
        with warnings.catch_warnings():  # torchmetrics' note that KID keeps every feature (64-d: a few kB here)
            warnings.filterwarnings("ignore", message=".*will save all extracted features")
            kid = KernelInceptionDistance(feature=self._extractor, normalize=True, subsets=self.kid_subsets,
                                          subset_size=subset)
        kid.update(_unit(self.real), real=True)
        kid.update(_unit(fake), real=False)
        with torch.random.fork_rng(devices=[]):  # torchmetrics' KID draws subsets from the global generator
            torch.manual_seed(self.seed)
            kid_mean, kid_std = kid.compute()
            fid = float(self._fid.compute())
        fake_feats = self.judge.features(fake)
        out = {"fid": fid, "kid_mean": float(kid_mean), "kid_std": float(kid_std), "n_real": n_real, "n_fake": n_fake}
        if min(n_real, n_fake) > self.k:
            out["precision"], out["recall"] = precision_recall(self._real_feats, fake_feats, self.k)
        return out


def warn_small_sets(n_real: int, n_fake: int) -> list[str]:
    """Warn (once per metric) when a set is smaller than the metric needs; returns the messages."""
    n = min(n_real, n_fake)
    msgs = [f"{name}: {n} samples per set (real {n_real}, generated {n_fake}) is fewer than the {need} it needs to be "
            f"reliable; {'the value is biased upward, ' if name == 'fid' else ''}compare only at equal set sizes"
            for name, need in MIN_SAMPLES.items() if n < need]
    for m in msgs:
        warnings.warn(m, stacklevel=3)
    return msgs


def _unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)
