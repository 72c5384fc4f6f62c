"""β-VAE in the feature space of a frozen pretrained backbone (pipeline/backbone.py).

The backbone turns a crop into a multi-scale map of ImageNet features (S/8 x S/8 locations),
standardised per channel on the clean training crops. A small convolutional VAE with a spatial
latent (z of latent_dim channels per location at stride 16: each code sees a neighbourhood)
encodes and reconstructs that map; it is trained on clean crops only, on features computed once
(the backbone never changes), so an epoch is a pass over cached tensors. In eval mode it returns,
besides the KL and the latent code's distance to clean codes, three maps upsampled to the crop
(ModelOutput.feature_maps, channels FEATURE_MAPS):
  feature_sq   squared reconstruction error per location, averaged over channels;
  feature_cos  1 - cosine(feature, reconstruction) per location (RD4AD's distance);
  patch_knn    distance of each location's feature to the nearest clean training patch of a
               greedy coreset kept inside the model (PatchCore's memory bank).
It has no pixel reconstruction: `recon` is the input itself, so scoring reads the feature maps.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.backbone import load_backbone
from pipeline.config import ModelConfig
from pipeline.images import float_batches
from pipeline.models.blocks import BANK_FAR, LatentReport, StepOutput, bank_distance, check_size, latent_bank
from pipeline.models.convvae import ACTIVE_UNIT_KL, free_bits_kl, kl_per_dim, kl_report
from pipeline.models.output import FEATURE_CHANNELS, ModelOutput, single_family

FEATURE_MAPS = ("feature_sq", "feature_cos", "patch_knn")
assert len(FEATURE_MAPS) == FEATURE_CHANNELS
PATCH_BANK_ROWS = 4096  # coreset size; rows left unfilled (tiny sets) sit far away
CORESET_POOL = 40_000  # random clean patches the greedy coreset is chosen from
CORESET_DIMS = 128  # random projection the coreset's distances are measured in (as PatchCore)
FEATURE_BATCH = 32


def greedy_coreset(patches: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    """Indices of `rows` patches chosen by greedy k-center (each next pick is the patch farthest
    from all picked so far), distances in a seeded random projection: the bank covers every kind
    of clean patch, not only the common ones."""
    if len(patches) <= rows:
        return torch.arange(len(patches))
    generator = torch.Generator().manual_seed(seed)
    dims = min(CORESET_DIMS, patches.shape[1])
    projected = patches.float() @ torch.randn(patches.shape[1], dims, generator=generator) / dims**0.5
    # |a - b|^2 = |a|^2 - 2 a.b + |b|^2: one matrix-vector product a pick, no (N, dims) temporary
    norms = projected.pow(2).sum(dim=1)
    picked = torch.empty(rows, dtype=torch.long)
    picked[0] = int(torch.randint(len(patches), (1,), generator=generator))
    nearest = torch.full((len(patches),), float("inf"))
    for k in range(rows):
        if k:
            picked[k] = nearest.argmax()
        centre = projected[picked[k]]
        torch.minimum(nearest, norms - 2 * (projected @ centre) + norms[picked[k]], out=nearest)
    return picked


def nearest_patch_distance(patches: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(N,) Euclidean distance from each patch to its nearest bank row: ranked by one float32
    matmul, then measured exactly (bank_distance does the same in float64 for a few codes; for
    thousands of patches an image the float32 ranking is 4x cheaper and near-ties do not matter)."""
    ranking = bank.pow(2).sum(dim=1)[None] - 2 * patches @ bank.T
    nearest = ranking.argmin(dim=1)
    return (patches - bank[nearest]).pow(2).sum(dim=1).sqrt()


class FeatureVAE(nn.Module):
    """β-VAE over a frozen backbone's feature map; crops of any side divisible by 16."""

    uses_beta = True
    pixel_inputs = False  # the training loop feeds cached features (feature_inputs), not pixels
    default_channels = (128,)  # hidden width: 23 ms a 256 px crop per training step here, 58 at 256 (cost, not quality)
    latent_score_name = "kl"

    def __init__(self, cfg: ModelConfig, image_size: int) -> None:
        super().__init__()
        check_size(image_size, 4)
        self.cfg = cfg
        self.backbone = load_backbone(cfg.backbone, cfg.backbone_weights)
        c, width, z = self.backbone.channels, (cfg.channels or self.default_channels)[0], cfg.latent_dim
        self.register_buffer("feature_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, c, 1, 1))
        self.encoder = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.GELU(),
                                     nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU())
        self.to_stats = nn.Conv2d(width, 2 * z, 1)
        self.decoder = nn.Sequential(nn.Conv2d(z, width, 1), nn.GELU(), nn.Upsample(scale_factor=2, mode="nearest"),
                                     nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, c, 3, padding=1))
        self.register_buffer("latent_bank", latent_bank(z))
        self.register_buffer("patch_bank", torch.full((PATCH_BANK_ROWS, c), BANK_FAR))

    # -- features ---------------------------------------------------------------------------
    @torch.inference_mode()
    def feature_inputs(self, crops: torch.Tensor, fit: bool = False) -> torch.Tensor:
        """Standardised features of uint8 crops, computed once for every epoch (float16 to halve
        the memory); fit=True first sets the per-channel mean and std from these (clean train) crops."""
        device = self.feature_mean.device
        raw = torch.cat([self.backbone(x).half() for x in float_batches(crops, FEATURE_BATCH, device)])
        if fit:
            flat = raw.float().transpose(0, 1).flatten(1)  # (C, N * h * w)
            self.feature_mean.copy_(flat.mean(dim=1).view_as(self.feature_mean))
            self.feature_std.copy_(flat.std(dim=1).clamp(min=1e-3).view_as(self.feature_std))
        return ((raw.float() - self.feature_mean) / self.feature_std).half()

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        return (self.backbone(x) - self.feature_mean) / self.feature_std

    # -- the VAE ----------------------------------------------------------------------------
    def stats(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.encoder(f)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def training_step(self, f: torch.Tensor, beta: float) -> StepOutput:
        """On cached standardised features: recon NLL of a unit-variance Gaussian decoder (features
        are in units of their clean std) + β·KL, free bits per latent channel and location."""
        f = f.float()
        mu, logvar = self.stats(f)
        recon_features = self.decoder(mu + torch.randn_like(mu) * (0.5 * logvar).exp())
        recon = 0.5 * (f - recon_features.float()).pow(2).flatten(1).sum(dim=1)
        kl = kl_per_dim(mu.float(), logvar.float())  # (B, z, h, w)
        objective = recon + beta * free_bits_kl(kl.flatten(1), self.cfg.free_bits)
        per_channel = kl.sum(dim=(0, 2, 3)).detach() / (kl.shape[2] * kl.shape[3])
        return StepOutput(objective, recon, recon_features, {"kl": kl.flatten(1).sum(dim=1)}, per_channel)

    @staticmethod
    def latent_metrics(latent_stats: torch.Tensor, n_images: int) -> dict[str, float]:
        return {"active_units": float((latent_stats / n_images > ACTIVE_UNIT_KL).sum())}

    @torch.inference_mode()
    def latent_report(self, features: torch.Tensor) -> LatentReport:
        """Mean KL per latent channel and location over clean val features (feature_inputs)."""
        total = torch.zeros(self.cfg.latent_dim)
        for start in range(0, len(features), FEATURE_BATCH):
            mu, logvar = self.stats(features[start:start + FEATURE_BATCH].float().to(self.feature_mean.device))
            total += kl_per_dim(mu, logvar).mean(dim=(2, 3)).sum(dim=0).cpu()
        return kl_report((total / max(1, len(features))).tolist())

    @torch.inference_mode()
    def fit_banks(self, features: torch.Tensor, seed: int) -> None:
        """From cached clean training features: the latent bank (each crop's mean code) and the
        patch bank (a greedy coreset of a random pool of clean patches)."""
        device = self.feature_mean.device
        codes = torch.cat([self.stats(features[s:s + FEATURE_BATCH].float().to(device))[0].mean(dim=(2, 3))
                           for s in range(0, len(features), FEATURE_BATCH)])
        generator = torch.Generator().manual_seed(seed)
        self.latent_bank.fill_(BANK_FAR)
        keep = torch.randperm(len(codes), generator=generator)[:len(self.latent_bank)]
        self.latent_bank[:len(keep)] = codes[keep.to(device)]
        patches = features.transpose(1, 3).reshape(-1, features.shape[1])  # (N * h * w, C)
        pool = patches[torch.randperm(len(patches), generator=generator)[:CORESET_POOL]].float()
        chosen = pool[greedy_coreset(pool, PATCH_BANK_ROWS, seed)]
        self.patch_bank.fill_(BANK_FAR)
        self.patch_bank[:len(chosen)] = chosen.to(device)

    @staticmethod
    def latent_score(x: torch.Tensor, out: ModelOutput, cfg: ModelConfig) -> torch.Tensor:
        """The KL of the image's spatial code, in nats (the ELBO's reconstruction half is the
        feature_sq map, scored on its own)."""
        return out.latent_score

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Inference (what the registry exports): the μ path's reconstruction of the features, the
        three maps upsampled to the crop, KL per image, the mean code's distance to clean codes."""
        f = self.standardised(x)
        mu, logvar = self.stats(f)
        recon = self.decoder(mu)
        b, c, h, w = f.shape
        sq = (f - recon).pow(2).mean(dim=1, keepdim=True)
        cos = 1 - F.cosine_similarity(f, recon, dim=1).unsqueeze(1)
        knn = nearest_patch_distance(f.permute(0, 2, 3, 1).reshape(-1, c), self.patch_bank).reshape(b, 1, h, w)
        maps = F.interpolate(torch.cat([sq, cos, knn], dim=1), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return ModelOutput(x, kl_per_dim(mu, logvar).flatten(1).sum(dim=1), torch.zeros_like(x), single_family(x),
                           latent_knn=bank_distance(mu.mean(dim=(2, 3)), self.latent_bank), feature_maps=maps)
