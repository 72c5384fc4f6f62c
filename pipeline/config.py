"""One typed configuration object; every default works on the embedded (laptop/CPU) setup.

Every setting is declared with setting() or option() (also a command-line option, `--image-size`
or its flag): name, default and help live here only. flows/cli.py builds the parser from
cli_options(); settings_reference() is the README's table. Why each default is what it is:
benchmarks/HISTORY.md.
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


def setting(default: Any, help: str) -> Any:
    """A setting of the config file, with the one line the settings reference shows."""
    return field(default=default, metadata={"help": help})


def option(default: Any, help: str, flag: str = "") -> Any:
    """A setting that the command line can set too (as --<name>, or flag)."""
    return field(default=default, metadata={"help": help, "cli": True, "flag": flag})


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
    crop: CropMode = option("auto", "panel cropping: auto (find the panel), roi (ingest.roi), none (whole frame)")
    roi: tuple[int, int, int, int] | None = setting(None, "x0, y0, x1, y1 in the source image, for crop roi")
    image_size: int = option(128, "model input side in pixels: crops are resized to it (grayscale)")
    tile: int = option(0, "cut the panel into overlapping tiles of this many source pixels; an image scores as its "
                          "worst tile (0: no tiling)")
    tile_overlap: float = setting(0.25, "share of a tile that overlaps its neighbour")
    auto_tile_aspect: float = option(1.5, "tile frames at least this elongated into squares of their short side "
                                          "(0: never)")
    min_side: int = setting(32, "images with a shorter side are quarantined as too small")
    max_pixels: int = setting(50_000_000, "images with more pixels are quarantined (decompression-bomb guard)")
    split_seed: int = setting(0, "seed of the panel-grouped train / val / test split")
    train_frac: float = setting(0.6, "share of clean panels for training; the rest is split evenly into val / test")
    metadata_suffixes: tuple[str, ...] = setting((".csv", ".json", ".md"), "sidecar files in the raw folder, never images")
    family_column: str = setting("family", "labels-file column naming each image's panel family (one model per "
                                           "family); empty: ignore it")


@dataclass(frozen=True)
class ModelConfig:
    model_type: Literal["convvae", "vqvae"] = option("convvae", "model type", flag="--model")
    backbone: str = option("none", "reconstruct the features of a frozen pretrained backbone instead of pixels: "
                                   "none, efficientnet_lite0, or resnet18/34/50, wide_resnet50_2 with --backbone-weights")
    backbone_weights: str = option("", "a torchvision state dict file for --backbone (efficientnet_lite0: "
                                       "its shipped file when empty)")
    latent_dim: int = option(64, "convvae: size of z; vqvae: size of each code vector")
    channels: tuple[int, ...] | None = setting(None, "conv widths, one per stage halving the side (empty: the model "
                                                     "type's own)")
    recon_loss: Literal["mse", "bce"] = option("mse", "reconstruction likelihood: Gaussian (σ = recon_sigma) "
                                                      "or Bernoulli decoder")
    beta: float = option(1.0, "β, the KL weight")
    beta_schedule: Literal["constant", "linear", "cyclical"] = option("constant", "how β moves over the epochs")
    beta_warmup_epochs: int = setting(10, "linear schedule: the epoch at which β reaches its value")
    beta_cycle_epochs: int = setting(10, "cyclical schedule: cycle length; β ramps up over the first half")
    free_bits: float = option(0.0, "nats per latent dimension: KL below this floor is not penalised")
    recon_sigma: float = setting(0.1, "Gaussian decoder σ in [0, 1] pixel units (β = 1 is the true ELBO)")
    codebook_size: int = option(128, "vqvae: number of codes")
    codebook_update: Literal["ema", "loss"] = option("ema", "vqvae: EMA of assigned vectors, or codebook loss + gradient")
    ema_decay: float = setting(0.99, "vqvae: decay of the codebook's moving averages")
    commitment_cost: float = setting(0.25, "vqvae: weight of the commitment term ‖z − sg[e]‖²")
    dead_code_threshold: float = setting(0.05, "vqvae: codes used less than this share of uniform are re-seeded")
    head_steps: int = option(600, "defect-head training steps after the model (0: no head)")
    head_width: int = setting(16, "channels of the defect head's first stage (doubling per stage)")
    head_lr: float = setting(3e-3, "defect head learning rate")
    head_batch: int = setting(16, "defect head batch size")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(40, "maximum epochs (early stopping may end sooner)")
    batch_size: int = setting(16, "crops per optimizer step (on a GPU the start of the batch ramp)")
    lr: float = setting(2e-3, "Adam learning rate at batch_size")
    gpu_batch_size: int = setting(256, "largest batch on a GPU; the learning rate scales with √(batch / batch_size)")
    min_steps: int = setting(32, "on a GPU the batch grows only while an epoch keeps at least this many steps")
    compile: bool = option(False, "torch.compile the training step (GPU; off by default until measured)")
    weight_decay: float = setting(0.0, "Adam weight decay")
    select_by: Literal["last", "recon", "synthetic"] = option(
        "recon", "which epoch to keep: the last (whole schedule), lowest clean val loss, or best at finding defects "
        "pasted on clean val crops (family models keep the last under recon)")
    patience: int = setting(8, "early stop after this many epochs without a better selection figure")
    min_epochs: int = setting(20, "never stop before this epoch (family models run every epoch)")
    min_delta: float = setting(1e-4, "relative improvement that counts as better")
    seed: int = option(0, "seed of weights, batch order and augmentation")
    members: int = option(2, "models trained from seeds seed, seed+1, ...; every score is their mean (a feature "
                                "model, model.backbone, trains one)")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to train")
    max_shift: int = setting(3, "augmentation: largest random shift in pixels")
    brightness: float = setting(0.08, "augmentation: multiplicative brightness range ±")
    num_threads: int = setting(0, "torch threads (0: torch's default)")
    loader_workers: int = option(0, "DataLoader worker processes; crops are already decoded in memory, so 0 "
                                    "suits CPU", flag="--workers")
    checkpoint: bool = setting(True, "write <workdir>/checkpoints/<model_type>.pt every epoch (for --resume)")


@dataclass(frozen=True)
class ScoreConfig:
    blur_sigma: float = setting(0.0, "blur (pixels on the model-size crop) before the maxima of the *_blur_max "
                                     "scores (0: none, so a 1-px crack keeps its error)")
    heatmap_sigma: float = setting(2.0, "blur of the heatmap that regions, the defect-type hint and pixel "
                                        "ROC-AUC read")
    area_sigma: float = setting(8.0, "blur of dark_area_max's signed residual")
    dark_norm_sigma: float = setting(4.0, "blur of dark_norm_area_max's normalised signed residual")
    dark_norm_eps: float = setting(0.1, "dark_norm_area_max: floor of the clean error, as a share of its mean")
    norm_eps: float = setting(0.5, "norm_blur_max divides by clean error + this share of its mean")
    batch_size: int = setting(64, "crops per forward pass")
    batch_images: int = setting(256, "most images per ledger commit (the most a crash makes a re-run redo)")
    drift_psi: float = setting(0.25, "PSI of clean-looking scores against calibration above which a batch drifted")
    drift_flag_rate: float = setting(0.8, "a batch with at least this share flagged has drifted")
    region_size_frac: float = setting(0.125, "smallest side of the reported region, as a share of the crop")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to score (the model and every score; auto: the "
                                                             "GPU when there is one)")
    decode_workers: int = option(0, "processes that read, decode and crop images while the model scores (0: in "
                                    "this process; on a many-core GPU box, about the core count)")


@dataclass(frozen=True)
class CalibrateConfig:
    rule: str = setting("max-f1", "threshold rule: max-f1, fpr:<x>, recall:<x> or fixed:<value>")
    fallback_quantile: float = setting(0.99, "without labelled defects: this quantile of clean val scores")


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str = setting("sqlite:///mlruns/mlflow.db", "MLflow store (MLFLOW_TRACKING_URI overrides it)")
    artifact_root: str = setting("mlruns/artifacts", "artifact folder of a new local store")
    train_experiment: str = setting("panel-train", "MLflow experiment of training and calibration runs")
    score_experiment: str = setting("panel-score", "MLflow experiment of scoring runs")
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
    def load(cls, path: Path | None) -> "PanelConfig":
        """Defaults, overridden by a JSON file when given."""
        if path is None:
            return cls()
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: invalid config: {exc}") from exc


def cli_options(section: str) -> Iterator[CliOption]:
    """The settings of one PanelConfig section that the command line can set."""
    section_cls = type(getattr(PanelConfig(), section))
    hints = typing.get_type_hints(section_cls)
    for f in dataclasses.fields(section_cls):
        if not f.metadata.get("cli"):
            continue
        hint = hints[f.name]
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
        yield CliOption(section, f.name, f.metadata["flag"] or f"--{f.name.replace('_', '-')}",
                        str if choices else type(f.default), choices, f.default, f.metadata["help"])


def settings_reference(cfg: PanelConfig | None = None) -> str:
    """Every setting as a Markdown table, with its value in cfg (the defaults when None: the
    README's settings reference is this text; `panelscan settings` prints it)."""
    cfg = cfg or PanelConfig()
    rows = [f"| setting | {'default' if cfg == PanelConfig() else 'value'} | option | what it does |", "|---|---|---|---|"]
    for section in (f.name for f in dataclasses.fields(PanelConfig)):
        for f in dataclasses.fields(type(getattr(cfg, section))):
            flag = (f.metadata["flag"] or f"--{f.name.replace('_', '-')}") if f.metadata.get("cli") else ""
            default = json.dumps(getattr(getattr(cfg, section), f.name), ensure_ascii=False)
            rows.append(f"| `{section}.{f.name}` | `{default}` | {f'`{flag}`' if flag else ''} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"
