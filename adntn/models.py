"""AlexNet and VGG-16 for 32x32 inputs, with every layer addressable by its classic name.

Layers are direct children named as in the papers (``conv1`` .. ``conv5``, ``conv1_1`` ..
``conv5_3``, ``fc6``, ``fc7``, ``fc8``), so ``adntn.compress(model, {"fc6": ...})`` finds them. The
classifier is the classic one: an adaptive average pool to 6x6 (AlexNet) or 7x7 (VGG-16), as in
torchvision, so ``fc6`` is 9216 -> 4096 and 25088 -> 4096 at full width, then ``fc7`` 4096 -> 4096
and ``fc8`` 4096 -> classes, with dropout before ``fc6`` and ``fc7``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from adntn.errors import AdntnError

MODELS = ("alexnet", "vgg16")
_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
_ALEXNET = ((64, True), (192, True), (384, False), (256, False), (256, True))


def _scaled(channels: int, width: float) -> int:
    return max(4, round(channels * width))


def _classifier(layers: OrderedDict, features: int, fc_dim: int, classes: int, dropout: float) -> None:
    layers["flatten"] = nn.Flatten()
    layers["drop6"] = nn.Dropout(dropout)
    layers["fc6"] = nn.Linear(features, fc_dim)
    layers["relu6"] = nn.ReLU(inplace=True)
    layers["drop7"] = nn.Dropout(dropout)
    layers["fc7"] = nn.Linear(fc_dim, fc_dim)
    layers["relu7"] = nn.ReLU(inplace=True)
    layers["fc8"] = nn.Linear(fc_dim, classes)


def _init(model: nn.Sequential) -> nn.Sequential:
    # torchvision's VGG init: He-normal convolutions keep the signal alive through deep ReLU stacks.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def _conv(layers: OrderedDict[str, nn.Module], name: str, c: int, out: int, batch_norm: bool) -> None:
    """``conv{name}`` (3x3, padding 1), then ``bn{name}`` when asked, then ``relu{name}``."""
    layers[f"conv{name}"] = nn.Conv2d(c, out, 3, padding=1)
    if batch_norm:
        layers[f"bn{name}"] = nn.BatchNorm2d(out)
    layers[f"relu{name}"] = nn.ReLU(inplace=True)


def alexnet(
    in_channels: int = 3,
    classes: int = 10,
    *,
    width: float = 1.0,
    fc_dim: int = 4096,
    dropout: float = 0.5,
    batch_norm: bool = True,
) -> nn.Sequential:
    """AlexNet for 32x32 images (3x3 convolutions, three 2x2 pools, optional batch norm, classic classifier)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c = in_channels
    for k, (out, pool) in enumerate(_ALEXNET, start=1):
        out = _scaled(out, width)
        _conv(layers, f"{k}", c, out, batch_norm)
        if pool:
            layers[f"pool{k}"] = nn.MaxPool2d(2)
        c = out
    layers["avgpool"] = nn.AdaptiveAvgPool2d((6, 6))
    _classifier(layers, c * 36, fc_dim, classes, dropout)
    return _init(nn.Sequential(layers))


def vgg16(
    in_channels: int = 3,
    classes: int = 10,
    *,
    width: float = 1.0,
    fc_dim: int = 4096,
    dropout: float = 0.5,
    batch_norm: bool = True,
) -> nn.Sequential:
    """VGG-16 for 32x32 images (13 3x3 convolutions in 5 blocks, optional batch norm, classic classifier)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c = in_channels
    for b, block in enumerate(_VGG16, start=1):
        for k, out in enumerate(block, start=1):
            out = _scaled(out, width)
            _conv(layers, f"{b}_{k}", c, out, batch_norm)
            c = out
        layers[f"pool{b}"] = nn.MaxPool2d(2)
    layers["avgpool"] = nn.AdaptiveAvgPool2d((7, 7))
    _classifier(layers, c * 49, fc_dim, classes, dropout)
    return _init(nn.Sequential(layers))


def build_model(name: str, in_channels: int, classes: int, **options: object) -> nn.Sequential:
    """``alexnet`` or ``vgg16`` by name.

    Raises:
        AdntnError: On an unknown model or option.
    """
    if name not in MODELS:
        raise AdntnError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    try:
        return (alexnet if name == "alexnet" else vgg16)(in_channels, classes, **options)  # type: ignore[arg-type]
    except TypeError as exc:
        raise AdntnError(f"{name}: {exc}") from None
