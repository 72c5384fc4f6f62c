"""Several trainings of one model, scored as one (`train.members`).

One training is luck: on the bench the training seed alone moved the real-set mean by 0.014, as
much as a change of split, and a small family model (ELPV's mono cells) could end 40 epochs with
twice another seed's clean error. Member k trains exactly as one model would, with seed
`train.seed + k`; the ensemble returns every member's reconstruction and error reference as a
channel of its own, so each score is computed per member and then averaged
(scoring.score_maps), and the heatmap is the mean of the members' maps. Its latent outputs are
the members' means. With families every member is a router with its own family models (the
router's classifier is fitted on the same crops, so all route alike); the images keep the first
member's family index.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.config import PanelConfig
from pipeline.errors import UserError
from pipeline.families import FitOne, Trained, train_models
from pipeline.models import ModelOutput
from pipeline.training import TrainResult


class Ensemble(nn.Module):
    """Members behind the common model interface; recon and error_ref are (B, members, S, S)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        outs = [ModelOutput.of(member(x)) for member in self.members]
        knn = torch.stack([o.latent_knn for o in outs]).mean(dim=0)
        features = None if outs[0].feature_maps is None else torch.stack([o.feature_maps for o in outs]).mean(dim=0)
        return ModelOutput(torch.cat([o.recon for o in outs], dim=1),
                           torch.stack([o.latent_score for o in outs]).mean(dim=0),
                           torch.cat([o.error_ref for o in outs], dim=1), outs[0].family, latent_knn=knn,
                           feature_maps=features)


def member_name(k: int, family: str) -> str:
    """Member k's model in logs and checkpoints: member 0 keeps the plain names ('' or the family)."""
    if k == 0:
        return family
    return f"member{k}-{family}" if family else f"member{k}"


def member_count(cfg: PanelConfig) -> int:
    """How many trainings train_members runs: train.members, but one for a feature model (its
    features and coreset are fixed, so a second seed adds minutes per epoch on a CPU for little
    spread to average out)."""
    return 1 if cfg.model.backbone != "none" else cfg.train.members


def train_members(train: torch.Tensor, train_families: np.ndarray, val: torch.Tensor, val_families: np.ndarray,
                  cfg: PanelConfig, fit_one: FitOne) -> Trained:
    """member_count trainings (families.train_models each, seed train.seed + k) as one model; the
    results are keyed by member_name, so every member's curves and checkpoints stay apart."""
    if cfg.train.members < 1:
        raise UserError(f"train.members is {cfg.train.members}: at least one model must be trained")
    members = []
    for k in range(member_count(cfg)):
        def fit(family: str, tx: torch.Tensor, vx: torch.Tensor, member_cfg: PanelConfig, k: int = k) -> TrainResult:
            return fit_one(member_name(k, family), tx, vx, member_cfg)
        members.append(train_models(train, train_families, val, val_families,
                                    cfg.replace("train", seed=cfg.train.seed + k), fit))
    if len(members) == 1:
        return members[0]
    results = {member_name(k, family): r for k, m in enumerate(members) for family, r in m.results.items()}
    return Trained(Ensemble([m.model for m in members]).eval(), results, members[0].classifier)
