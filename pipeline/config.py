"""One typed configuration object; every default works on the embedded (laptop/CPU) setup.

A setting declared with option() is also a command-line option (`--image-size`, or its flag):
its name, default and help live here only; flows/cli.py builds the parser from cli_options().
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import UserError

CropMode = Literal["auto", "roi", "none"]


def option(default: Any, help: str, flag: str = "") -> Any:
    """A setting that the command line can set too (as --<name>, or flag)."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class CliOption:
    section: str  # ingest | model | train | ...
    name: str  # field name in the section
    flag: str  # --image-size
    type: type
    choices: tuple[str, ...] | None
    default: Any
    help: str


@dataclass(frozen=True)
class IngestConfig:
    crop: CropMode = option("auto", "panel cropping")
    roi: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in the source image, for crop="roi"
    image_size: int = option(128, "model input side in pixels: crops are resized to it (grayscale)")
    # Tiling for large images / fine defects: the panel box is cut into overlapping tile x tile
    # source-pixel patches, each resized to image_size and scored; an image's score is its worst
    # tile's, and the report's region lies in that tile. 0: one crop per image.
    tile: int = option(0, "cut the panel into overlapping tiles of this many source pixels; an image scores as its "
                          "worst tile (0: no tiling)")
    tile_overlap: float = 0.25  # fraction of a tile shared with its neighbour
    # Long frames (long side >= this times the short side) are cut into square tiles of the short
    # side instead of being squashed into a square (a 2.5:1 frame loses a 2 px crack). 0: never.
    # Chosen on KolektorSDD validation (bench split): 0.868 tiled vs 0.773 squashed. Synthetic
    # panels (at most 1.35:1), ELPV and PIPED (square) are not tiled.
    auto_tile_aspect: float = option(1.5, "tile frames at least this elongated into squares of their short side "
                                          "(0: never)")
    min_side: int = 32  # smaller images are quarantined
    max_pixels: int = 50_000_000  # decompression-bomb guard
    split_seed: int = 0
    train_frac: float = 0.6  # of clean panels; the rest is split evenly into val / test
    metadata_suffixes: tuple[str, ...] = (".csv", ".json", ".md")  # sidecar files, never images
    # Labels-file column naming each image's panel family (e.g. mono / poly cells). Clean training
    # crops of two or more families: one model per family (pipeline/families.py). "": ignore it.
    family_column: str = "family"


@dataclass(frozen=True)
class ModelConfig:
    model_type: Literal["convvae", "vqvae"] = option("convvae", "model type", flag="--model")
    # What the VAE reconstructs: pixels ("none"), or the feature map of a frozen pretrained backbone
    # (pipeline/backbone.py, models/featvae.py): efficientnet_lite0 ships with its package; a
    # torchvision resnet needs model.backbone_weights. Feature models train one member, no defect head.
    backbone: str = option("none", "reconstruct the features of a frozen pretrained backbone instead of pixels: "
                                   "none, efficientnet_lite0, or resnet18/34/50, wide_resnet50_2 with --backbone-weights")
    backbone_weights: str = option("", "a torchvision state dict file for --backbone (efficientnet_lite0: "
                                       "its shipped file when empty)")
    latent_dim: int = option(64, "convvae: size of z; vqvae: size of each code vector")
    # conv widths, depth = len (each stage halves the side); None: the model type's default_channels
    channels: tuple[int, ...] | None = None
    recon_loss: Literal["mse", "bce"] = option("mse", "reconstruction likelihood: Gaussian (σ = recon_sigma) "
                                                      "or Bernoulli decoder")
    beta: float = option(1.0, "β, the KL weight")
    beta_schedule: Literal["constant", "linear", "cyclical"] = option("constant", "how β moves over the epochs")
    beta_warmup_epochs: int = 10  # linear: β reaches its value at this epoch
    beta_cycle_epochs: int = 10  # cyclical: cycle length; β ramps up over the first half of each
    free_bits: float = option(0.0, "nats per latent dimension: KL below this floor is not penalised")
    # Gaussian decoder std-dev in [0,1] pixel units. recon = SSE / (2 sigma^2), so beta=1 is a true
    # ELBO and beta means the same at every image size (both terms are nats per image).
    recon_sigma: float = 0.1
    # VQ-VAE only
    codebook_size: int = option(128, "vqvae: number of codes")
    codebook_update: Literal["ema", "loss"] = option("ema", "vqvae: EMA of assigned vectors, or codebook loss + gradient")
    ema_decay: float = 0.99
    commitment_cost: float = 0.25  # weight of ||z - sg[e]||² (van den Oord et al.)
    dead_code_threshold: float = 0.05  # restart codes whose share of assignments < this / codebook_size
    # Defect head (pipeline/defect_head.py): a small U-Net on (input, reconstruction) trained on
    # pasted synthetic defects after the model; 0 steps: none. On by default since session 24: offered
    # as candidate scores on nine set-splits (session 23, benchmarks/HISTORY.md) it raised the
    # out-of-fold val mean 0.9036 -> 0.9058, meeting a rule written beforehand; validation picks it
    # only where it wins by more than calibrate.HEAD_MARGIN, and scoring drops it where it is not picked (exported.without_head).
    head_steps: int = option(600, "defect-head training steps after the model (0: no head)")
    head_width: int = 16  # channels of the head's first stage (doubling per stage)
    head_lr: float = 3e-3  # on a toy surface, 400 steps: pasted-defect AUC .75 at 3e-3 vs .57 at 1e-3
    head_batch: int = 16


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(40, "maximum epochs (early stopping may end sooner)")
    batch_size: int = 16  # small sets need many steps: 16 beat 32 at the same epochs on the synthetic set
    lr: float = 2e-3
    # On a GPU the batch grows with the set (pipeline/train.py: device_batch): the CPU batch while an
    # epoch would have under `min_steps` steps, up to gpu_batch_size, the LR scaled by sqrt(batch / batch_size).
    gpu_batch_size: int = 256
    min_steps: int = 32
    compile: bool = option(False, "torch.compile the training step (GPU; off by default until measured)")
    weight_decay: float = 0.0
    # Which epoch's weights are kept: "recon", the lowest clean val reconstruction loss, or
    # "synthetic", the best self-supervised check (defects pasted on clean val crops,
    # pipeline/selfcheck.py). Chosen on KolektorSDD validation (bench split, tiled): recon 0.880,
    # synthetic 0.868; the pasted defects scored only 0.57-0.64 there, they do not yet track real ones.
    # "last" (the whole schedule's final weights): split 1 of the real sets, val mean -0.002 (PIPED
    # 0.994 -> 0.985; session 29, benchmarks/HISTORY.md), so an option, not the default. Per-family
    # models keep their last epoch under "recon" (pipeline/families.py; sessions 30-31).
    select_by: Literal["last", "recon", "synthetic"] = option(
        "recon", "which epoch to keep: the last (whole schedule), lowest clean val loss, or best at finding defects "
        "pasted on clean val crops")
    patience: int = 8  # early stop after this many epochs without a better selection figure ...
    min_epochs: int = 20  # ... but never before this: early val figures are too noisy to judge (BatchNorm lag)
    min_delta: float = 1e-4  # relative improvement that counts as better
    seed: int = option(0, "seed of weights, batch order and augmentation")
    # Trainings scored as one (pipeline/ensemble.py), member k with seed + k: each score is the
    # members' mean. Costs members x the training and the model's scoring time. 2 chosen on labelled
    # validation (session 20, benchmarks/HISTORY.md): over five set-splits (ELPV x2, KolektorSDD x3)
    # the two seeds' summed scores beat the mean single training in every one; `panelscan bench`
    # on splits 0-2 (session 21): real-set val +0.003 to +0.004 on each split.
    members: int = option(2, "models trained from seeds seed, seed+1, ...; every score is their mean (a feature "
                                "model, model.backbone, trains one)")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to train")
    max_shift: int = 3  # augmentation: random shift in pixels (keeps clean images clean)
    brightness: float = 0.08  # augmentation: multiplicative gain range +-
    num_threads: int = 0  # 0: torch default
    loader_workers: int = option(0, "DataLoader worker processes; crops are already decoded in memory, so 0 "
                                    "suits CPU", flag="--workers")
    checkpoint: bool = True  # save <workdir>/checkpoints/<model_type>.pt every epoch (for --resume)


@dataclass(frozen=True)
class ScoreConfig:
    # Blur (pixels on the model-size crop) before the max of blur_max, norm_blur_max and dark_blur_max.
    # Chosen on validation: on 14 saved trainings the mean val ROC-AUC over the real sets was .896 /
    # .890 / .879 / .874 / .864 for 0 / 0.5 / 1 / 2 / 4 (KolektorSDD's thin cracks: .883 at 0 vs .817
    # at 2; ELPV and PIPED within .002). Scored under bf16 on four of them, val moved <= .003.
    # The VQ-VAE, 6 trainings on the same sets: .871 / .872 / .865 / .863 / .856 for 0 / 0.5 / 1 / 2 / 4
    # (its demo training alone preferred 2: val .940 vs .918), so one default serves both (README).
    blur_sigma: float = 0.0
    # The maps people see and the regions, the defect-type hint and pixel ROC-AUC are read from:
    # the same normalised error, blurred so a region is an area, not a pixel (demo region IoU with
    # the true defect box: 0.34 at 2 px in the test pipeline, 0.19 unblurred).
    heatmap_sigma: float = 2.0
    # dark_area_max: a wider blur (pixels on the model-size crop) for dark areas: on ELPV validation
    # sigma 2 / 4 / 8 / 12 gave ROC-AUC .762 / .793 / .806 / .812 (flat from 8 on)
    area_sigma: float = 8.0
    # dark_norm_area_max: the signed residual over the clean per-pixel RMS error (its floor
    # dark_norm_eps of the mean), blurred by dark_norm_sigma. Picked on ELPV split 0's validation
    # among eps 0.1 / 0.5 x sigma 2 / 4 / 8 (out-of-fold ROC-AUC of the score choice), adopted by a
    # rule on splits 1-4 (README, "How each default was chosen").
    dark_norm_sigma: float = 4.0
    dark_norm_eps: float = 0.1
    topk_frac: float = 0.01  # top 1% of pixels for topk_mean
    norm_eps: float = 0.5  # norm_blur_max divides by (clean error + norm_eps * its mean)
    batch_size: int = 64  # crops per forward pass
    # most images per ledger commit (the most a crash can make a re-run redo); decoding in this
    # process commits every batch_scoring.PIPELINE_STEP (32) images, decode workers every batch_images
    batch_images: int = 256
    drift_psi: float = 0.25  # PSI of clean-looking scores vs calibration above which a batch has drifted
    drift_flag_rate: float = 0.8  # a batch with at least this share flagged has drifted
    region_size_frac: float = 0.125  # smallest side of the reported strongest-error box, fraction of the crop
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to score (the model and every score; auto: the "
                                                             "GPU when there is one)")
    decode_workers: int = option(0, "processes that read, decode and crop images while the model scores (0: in "
                                    "this process; on a many-core GPU box, about the core count)")


@dataclass(frozen=True)
class CalibrateConfig:
    rule: str = "max-f1"  # max-f1 | fpr:<x> | recall:<x> | fixed:<value>
    fallback_quantile: float = 0.99  # threshold = this quantile of clean val scores when no defects


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    train_experiment: str = "panel-train"
    score_experiment: str = "panel-score"
    model_name: str = option("panel-anomaly", "registered model name; one per data set, so champions are only "
                                              "compared on the same test crops")


@dataclass(frozen=True)
class PanelConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, section: str, **changes: Any) -> "PanelConfig":
        """A copy with some fields of one section changed (None values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PanelConfig":
        defaults, kwargs = cls(), {}
        for name in (f.name for f in dataclasses.fields(cls)):
            section_cls = type(getattr(defaults, name))
            values = dict(data.get(name, {}))
            for f in dataclasses.fields(section_cls):
                if isinstance(values.get(f.name), list):
                    values[f.name] = tuple(values[f.name])
            unknown = set(values) - {f.name for f in dataclasses.fields(section_cls)}
            if unknown:
                raise UserError(f"unknown config keys in [{name}]: {sorted(unknown)}")
            kwargs[name] = section_cls(**values)
        return cls(**kwargs)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "PanelConfig":
        """A config stored with a registered version: settings it predates mean what the code
        did before they existed (ABSENT_MEANT), not today's defaults."""
        data = {section: dict(values) for section, values in data.items()}
        for section, meant in ABSENT_MEANT.items():
            data[section] = meant | data.get(section, {})
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: Path | None) -> "PanelConfig":
        """Defaults, overridden by a JSON file when given."""
        if path is None:
            return cls()
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: invalid config: {exc}") from exc


# Settings added after versions were registered, and what a stored config without them meant.
ABSENT_MEANT: dict[str, dict[str, Any]] = {"ingest": {"auto_tile_aspect": 0.0}, "model": {"head_steps": 0},
                                           "train": {"select_by": "recon"}}


def cli_options(section: str) -> Iterator[CliOption]:
    """The settings of one PanelConfig section that the command line can set."""
    section_cls = type(getattr(PanelConfig(), section))
    hints = typing.get_type_hints(section_cls)
    for f in dataclasses.fields(section_cls):
        if "help" not in f.metadata:
            continue
        hint = hints[f.name]
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
        yield CliOption(section, f.name, f.metadata["flag"] or f"--{f.name.replace('_', '-')}",
                        str if choices else type(f.default), choices, f.default, f.metadata["help"])
