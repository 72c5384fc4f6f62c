"""What a trained model keeps from its clean training crops, fitted once after training: the
per-pixel clean error reference (what the normalised scores divide by), the bank of clean latent
codes behind latent_knn, and the code projection that bank is measured in."""

from __future__ import annotations

import torch
from sklearn.decomposition import PCA
from torch import nn

from pipeline.images import float_batches
from pipeline.models.blocks import BANK_FAR, CodeProjection


@torch.inference_mode()
def fit_error_reference(model: nn.Module, clean: torch.Tensor, batch_size: int = 64,
                        device: torch.device | None = None) -> torch.Tensor:
    """Mean squared reconstruction error per pixel over clean uint8 crops; stored in the model."""
    total = torch.zeros_like(model.error_ref)
    for x in float_batches(clean, batch_size, device):
        total += (x - model(x).recon).pow(2).sum(dim=0, keepdim=True)
    model.error_ref.copy_(total / max(1, len(clean)))
    return model.error_ref


@torch.inference_mode()
def fit_latent_bank(model: nn.Module, clean: torch.Tensor, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """The latent codes of clean uint8 crops (a seeded sample of BANK_ROWS when there are more),
    stored in the model's bank; the rows left over stay far away. A model whose code is a projection
    (the ConvVAE) first gets its principal axes fitted on the same sample."""
    bank = model.latent_bank
    keep = torch.randperm(len(clean), generator=torch.Generator().manual_seed(seed))[:len(bank)].sort().values
    batches = float_batches(clean[keep], batch_size, bank.device)
    projection = getattr(model, "code_projection", None)
    if projection is None:
        codes = [model.codes(x) for x in batches]
    else:  # encode once: the same grids fit the axes and become the codes
        features = [model.code_features(x) for x in batches]
        fit_code_projection(projection, torch.cat(features) if features else torch.zeros(0), seed)
        codes = [projection(f) for f in features]
    bank.fill_(BANK_FAR)
    if codes:
        filled = torch.cat(codes)
        bank[:len(filled)] = filled.to(bank.dtype)
    return bank


def fit_code_projection(projection: CodeProjection, features: torch.Tensor, seed: int) -> None:
    """Centre on the clean features' mean and keep their leading principal axes (seeded randomized
    SVD: ~2 s for 2,048 crops of 8,192 numbers); fewer crops than axes leave the rest at 0."""
    projection.mean.zero_()
    projection.axes.zero_()
    if len(features) < 2:
        return
    pca = PCA(min(projection.axes.shape[1], len(features)), random_state=seed).fit(features.cpu().double().numpy())
    projection.mean.copy_(torch.from_numpy(pca.mean_))
    projection.axes[:, :pca.n_components_] = torch.from_numpy(pca.components_.T)
