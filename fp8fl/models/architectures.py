"""The paper's four models in FP32 (Wang et al. 2024, arXiv:2407.02610, §5.1), built by name:
``build_model(name, num_classes)``.

| name          | input (float32)                    | parameters                                   |
|---------------|------------------------------------|----------------------------------------------|
| ``lenet``       | N×3×32×32 images                   | 797,962 (C=10), 815,332 (C=100)              |
| ``resnet18``    | N×3×32×32 images                   | 11,173,962 (C=10), 11,220,132 (C=100)        |
| ``matchboxnet`` | N×64×T MFCCs (features × frames)   | 77,859 (C=35), 74,892 (C=12); any T          |
| ``kwt1``        | N×98×40 MFCCs (frames × features)  | 608,931 (C=35), 607,436 (C=12)               |
| ``convnet``     | N×3×32×32 images                   | 320,010 (C=10), 504,420 (C=100)              |

``convnet`` is the ConvNet of Li et al., "Low Precision Local Training is Enough for Federated
Learning" (NeurIPS 2024), not one of Wang et al.'s.

Every normalisation is per sample (GroupNorm, LayerNorm): BatchNorm's running statistics are
estimated on each client's skewed data and do not average into the statistics of the
union
(Hsieh et al. 2020, ref. [12] of Wang et al. 2024, arXiv:2407.02610); §5.2 names GroupNorm for the
CNNs and LayerNorm for KWT.
None of the models uses dropout. Convert any of them to QAT with ``fp8fl.models.qat.prepare_qat``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from fp8fl.models.attention import SelfAttention

__all__ = [
    "KWT",
    "MODELS",
    "ConvNet",
    "LeNet",
    "MatchboxNet",
    "build_model",
    "kwt1",
    "model_options",
    "resnet18",
]


class LeNet(nn.Module):
    """FedDyn's CIFAR CNN, called LeNet in Wang et al. 2024 (arXiv:2407.02610): two 5×5 convs with
    max pooling, three FCs."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 5)
        self.conv2 = nn.Conv2d(64, 64, 5)
        self.fc1 = nn.Linear(64 * 5 * 5, 384)
        self.fc2 = nn.Linear(384, 192)
        self.fc3 = nn.Linear(192, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(max_pool(x)) = max_pool(relu(x)) exactly, gradients included (ReLU is monotone and
        # passes no gradient at or below 0), and the ReLU then runs on a quarter of the elements
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class ConvNet(nn.Module):
    """The ConvNet of Li et al. 2024 (LPT-FL): ``depth`` stages of conv3×3 (padding 1) →
    GroupNorm(width, width) (instance norm) → ReLU → AvgPool2, then a linear classifier."""

    def __init__(
        self, num_classes: int, width: int = 128, depth: int = 3, channels: int = 3, size: int = 32
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        for i in range(depth):
            stages += [
                nn.Conv2d(channels if i == 0 else width, width, 3, padding=1),
                nn.GroupNorm(width, width),
                nn.ReLU(),
                nn.AvgPool2d(2),
            ]
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Linear(width * (size >> depth) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def resnet18(num_classes: int, norm_groups: int = 2) -> nn.Module:
    """torchvision's ResNet18 for 32×32 inputs: 3×3 stride-1 stem, no max pool, GroupNorm.

    Two groups per GroupNorm, as in FedDyn's ResNet18 and Hsieh et al. 2020, who found G = 2 the
    best setting under skewed client data. The norm layers keep torchvision's names (``bn1`` …).
    torchvision is imported here, not with the module: the other models never need it.
    """
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(
        BasicBlock,
        [2, 2, 2, 2],
        num_classes=num_classes,
        norm_layer=partial(nn.GroupNorm, norm_groups),
    )
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


class ConvBlock(nn.Module):
    """One NeMo Jasper block with repeat 1: conv → GroupNorm (+ 1×1 conv → GroupNorm residual) → ReLU.

    ``separable``: depthwise conv over time, then pointwise 1×1 conv over channels (both bias-free);
    otherwise one bias-free conv. "Same" padding keeps the number of frames.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        dilation: int = 1,
        separable: bool = True,
        residual: bool = False,
        norm_groups: int = 2,
    ) -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        if separable:
            self.conv = nn.Sequential(
                nn.Conv1d(
                    in_ch,
                    in_ch,
                    kernel,
                    padding=padding,
                    dilation=dilation,
                    groups=in_ch,
                    bias=False,
                ),
                nn.Conv1d(in_ch, out_ch, 1, bias=False),
            )
        else:
            self.conv = nn.Sequential(
                nn.Conv1d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False)
            )
        self.norm = nn.GroupNorm(norm_groups, out_ch)
        self.residual = None
        if residual:
            self.residual = nn.Sequential(
                nn.Conv1d(in_ch, out_ch, 1, bias=False), nn.GroupNorm(norm_groups, out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        if self.residual is not None:
            y = y + self.residual(x)
        return F.relu(y)


class MatchboxNet(nn.Module):
    """MatchboxNet 3x1x64 after NeMo's ``matchboxnet_3x1x64`` config, with GroupNorm for BatchNorm.

    Prologue 128 ch k11; three residual blocks of 64 ch with k13, k15, k17; epilogue 128 ch k29
    dilation 2, then 128 ch k1 (not separable); mean over time; linear classifier. This is the
    published 3x1x64 (77,859 parameters for 35 classes on 64 MFCCs, NeMo's "~77K"); Wang et al.'s
    "350K" matches no 3x1x64 configuration. GroupNorm with ``norm_groups`` groups (default 2, as in
    ``resnet18``) normalises each sample over its channels and frames, so nothing depends on the
    client's batch statistics.
    """

    def __init__(self, num_classes: int, features: int = 64, norm_groups: int = 2) -> None:
        super().__init__()
        block = partial(ConvBlock, norm_groups=norm_groups)
        self.encoder = nn.Sequential(
            block(features, 128, 11),
            block(128, 64, 13, residual=True),
            block(64, 64, 15, residual=True),
            block(64, 64, 17, residual=True),
            block(64, 128, 29, dilation=2),
            block(128, 128, 1, separable=False),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: N×features×frames."""
        return self.classifier(self.encoder(x).mean(dim=-1))


class PostNormLayer(nn.Module):
    """Transformer encoder layer with post-norm (KWT's choice): LN(x + attn(x)), LN(x + MLP(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class KWT(nn.Module):
    """Keyword Transformer (Berg et al. 2021): one token per MFCC frame, CLS token, learned positions.

    KWT-1 is the default: dim 64, depth 12, 1 head, MLP 256, GELU, post-norm; the head is LayerNorm
    + Linear on the CLS token as in the reference implementation. 608,931 parameters for 35 classes
    (607,436 for 12, the "607K" of the KWT paper).
    """

    def __init__(
        self,
        num_classes: int,
        frames: int = 98,
        features: int = 40,
        dim: int = 64,
        depth: int = 12,
        heads: int = 1,
        mlp_dim: int = 256,
    ) -> None:
        super().__init__()
        self.input_shape = (frames, features)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, frames + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        self.embed = nn.Linear(features, dim)
        self.layers = nn.Sequential(*(PostNormLayer(dim, heads, mlp_dim) for _ in range(depth)))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: N×frames×features."""
        if x.dim() != 3 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"KWT expects input N×{self.input_shape[0]}×{self.input_shape[1]} "
                f"(frames × MFCC features), got {tuple(x.shape)}"
            )
        tokens = self.embed(x)
        cls = self.cls_token.expand(len(x), -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embedding
        return self.head(self.layers(tokens)[:, 0])


def kwt1(num_classes: int, frames: int = 98, features: int = 40) -> KWT:
    """KWT-1: KWT with its default sizes; only the input shape may change."""
    return KWT(num_classes, frames=frames, features=features)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "resnet18": resnet18,
    "matchboxnet": MatchboxNet,
    "kwt1": kwt1,
    "convnet": ConvNet,
}
MODELS: tuple[str, ...] = tuple(_BUILDERS)


def model_options(name: str) -> tuple[str, ...]:
    """The keyword options ``build_model`` accepts for ``name``."""
    params = inspect.signature(_builder(name)).parameters
    return tuple(p for p in params if p != "num_classes")


def build_model(name: str, num_classes: int, **options: int) -> nn.Module:
    """A fresh FP32 model ``name`` (one of ``MODELS``) with ``num_classes`` outputs."""
    builder = _builder(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(valid) or 'none'}"
        )
    return builder(num_classes, **options)


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return _BUILDERS[name]
