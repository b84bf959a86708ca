"""The 2D map of latent editing (seed 000): a projection branch on the model's feature
layer that reproduces the 2D PCA of the features.

PCA is linear, so a linear branch reproduces it exactly; we fit it in closed form with
scikit-learn's PCA instead of by gradient descent (same optimum, no training time). The
branch stays fixed during a fine-tune, so the map's axes do not move: a point moves on
screen only because the network's features for it changed.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from core.engine import predict
from core.models.base import SteerableModel


class ProjectionBranch(nn.Module):
    """features (N, D) -> map coordinates (N, 2). Differentiable, so a loss on the
    coordinates reaches the backbone."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, 2)
        self.register_buffer("pca_mean", torch.zeros(feature_dim, dtype=torch.float64))
        self.register_buffer("pca_components", torch.zeros(2, feature_dim, dtype=torch.float64))
        self.register_buffer("pca_scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("explained_variance_ratio", torch.zeros(2, dtype=torch.float64))
        self.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.to(self.linear.weight.dtype))

    def project(self, model: SteerableModel, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Map coordinates of ``images`` under ``model`` (eval mode, no gradients)."""
        _, feats = predict(model, images, batch_size=batch_size, with_features=True)
        with torch.no_grad():
            return self.forward(feats.to(self.linear.weight.device)).cpu().numpy()


def fit_projection(features: np.ndarray | torch.Tensor, *, seed: int = 0) -> ProjectionBranch:
    """A branch whose output is the 2D PCA of ``features``, scaled so the first component has
    unit standard deviation (a map of roughly [-3, 3] whatever the feature scale).

    The PCA itself (mean, components, scale, explained variance) is kept in the branch's
    buffers, so its fidelity can be checked on new features with :func:`projection_r2`.
    """
    feats = np.asarray(features, dtype=np.float64)
    pca = PCA(n_components=2, random_state=seed).fit(feats)
    scale = 1.0 / max(float(np.sqrt(pca.explained_variance_[0])), 1e-8)
    branch = ProjectionBranch(feats.shape[1])
    with torch.no_grad():
        w = torch.tensor(pca.components_ * scale, dtype=torch.float32)
        branch.linear.weight.copy_(w)
        branch.linear.bias.copy_(-(w.double() @ torch.tensor(pca.mean_)).float())
        branch.pca_mean.copy_(torch.tensor(pca.mean_))
        branch.pca_components.copy_(torch.tensor(pca.components_))
        branch.pca_scale.fill_(scale)
        branch.explained_variance_ratio.copy_(torch.tensor(pca.explained_variance_ratio_))
    return branch


def pca_targets(branch: ProjectionBranch, features: np.ndarray | torch.Tensor) -> np.ndarray:
    """The PCA coordinates (in the branch's scale) the branch was fitted to reproduce, computed
    in float64 from the stored PCA."""
    feats = np.asarray(features, dtype=np.float64)
    comps = branch.pca_components.double().numpy()
    return (feats - branch.pca_mean.double().numpy()) @ comps.T * float(branch.pca_scale)


def projection_r2(branch: ProjectionBranch, features: np.ndarray | torch.Tensor) -> float:
    """Fidelity: R^2 of the branch's output against its PCA targets on ``features`` (use
    held-out features). 1.0 means the branch reproduces the PCA exactly; NaN for no features."""
    feats = np.asarray(features, dtype=np.float64)
    if len(feats) == 0:
        return float("nan")
    with torch.no_grad():
        out = branch(torch.tensor(feats, dtype=torch.float32)).double().numpy()
    target = pca_targets(branch, feats)
    ss_res = float(((out - target) ** 2).sum())
    ss_tot = float(((target - target.mean(0)) ** 2).sum())
    return 1.0 - ss_res / max(ss_tot, 1e-12)


def state(branch: ProjectionBranch) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in branch.state_dict().items()}


def from_state(sd: dict[str, torch.Tensor]) -> ProjectionBranch:
    branch = ProjectionBranch(sd["linear.weight"].shape[1])
    branch.load_state_dict(sd)
    return branch
