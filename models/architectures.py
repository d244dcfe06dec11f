"""Network architectures by name (small CNN/MLP, CIFAR-style VGG-8 and ResNet-18) or "pkg.mod:factory".

The named ones live in the `ARCHITECTURES` registry; a model file may name only those. A user factory
"pkg.mod:factory" imports and runs code, so it is accepted only where the user gives it (the command line,
or `factory=` to `models.checkpoint.load_model`), never from a file alone.
"""

from __future__ import annotations

import importlib
import inspect
import json
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

from firmware_protocol.registry import Registry


class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers; 'same' padding so an HxW input ends as (H/4)x(W/4)x32."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 8,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"SmallCNN needs an image size divisible by 4, got {image_size}")
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * (image_size // 4) ** 2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Fully connected net on flattened inputs: in -> hidden... -> classes with ReLU."""

    def __init__(self, in_features: int = 64, num_classes: int = 10, hidden: tuple[int, ...] = (256, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class VGG8(nn.Module):
    """CIFAR-style VGG-8 (6 conv + 2 linear) as used by NeFT: 128-128-M-256-256-M-512-512-M, FC 1024, FC classes."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 128) -> None:
        super().__init__()
        cfg: list[int | str] = [width, width, "M", 2 * width, 2 * width, "M", 4 * width, 4 * width, "M"]
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU()]
                c = int(v)
        self.features = nn.Sequential(*layers)
        side = image_size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * side * side, 1024), nn.ReLU(), nn.Linear(1024, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1-conv shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem without max-pool, stages 64-128-256-512 of two blocks each."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, c = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c, cout, stride), BasicBlock(cout, cout, 1)))
            c = cout
        self.layers = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("model architecture")
# The class each registered name builds: its typed keyword arguments are what --model-arg and a file may set.
_CLASSES: dict[str, type[nn.Module]] = {"cnn": SmallCNN, "mlp": MLP, "vgg8": VGG8, "resnet18": ResNet18}
_DIMENSIONS = ("self", "in_channels", "in_features", "num_classes", "image_size")  # set from the data set


@ARCHITECTURES.register("cnn")
def _cnn(in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    return SmallCNN(in_channels, num_classes, image_size, **kw)


@ARCHITECTURES.register("mlp")
def _mlp(in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    return MLP(in_channels * image_size * image_size, num_classes, **kw)


@ARCHITECTURES.register("vgg8")
def _vgg8(in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    return VGG8(in_channels, num_classes, image_size, **kw)


@ARCHITECTURES.register("resnet18")
def _resnet18(in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    return ResNet18(in_channels, num_classes, image_size, **kw)


def is_user_factory(name: str) -> bool:
    """True for a "pkg.mod:factory" name (code the user names), False for a registered architecture name."""
    return ":" in name


def model_arguments(name: str) -> dict[str, tuple[Any, Any]]:
    """The keyword arguments a registered architecture takes: name -> (type hint, default)."""
    init = _CLASSES[name].__init__
    hints = typing.get_type_hints(init)
    return {k: (hints[k], p.default) for k, p in inspect.signature(init).parameters.items() if k not in _DIMENSIONS}


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse (one-line ValueError) keyword arguments a registered architecture does not take, or of the wrong type.

    Widths and channel counts are whole numbers >= 1; ``tuple[int, ...]`` takes a list of them (``hidden=[64,32]``
    for the MLP; a single number is refused, not guessed), ``tuple[int, int]`` exactly two.
    """
    args = model_arguments(name)
    for key, value in kwargs.items():
        if key not in args:
            raise ValueError(f"model {name} takes {', '.join(args) or 'no arguments'}; got unknown {key}={value!r}")
        tp, default = args[key]
        like = (
            f"like {key}={json.dumps(list(default) if isinstance(default, tuple) else default, separators=(',', ':'))}"
        )
        if tp is int:
            if not _width(value):
                raise ValueError(f"model {name}: {key} must be a whole number >= 1, {like}; got {value!r}")
            continue
        items = typing.get_args(tp)
        fixed = len(items) if Ellipsis not in items else None
        what = "a list of layer widths" if fixed is None else f"a list of {fixed} whole numbers"
        if (
            not isinstance(value, (list, tuple))
            or not all(_width(v) for v in value)
            or (fixed is not None and len(value) != fixed)
        ):
            raise ValueError(f"model {name}: {key} must be {what} >= 1, {like}; got {value!r}")


def _width(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Instantiate a named architecture, or call the user factory "pkg.mod:factory"(**kwargs).

    A user factory receives only ``kwargs`` plus ``num_classes`` when it accepts it; it must return an nn.Module.
    """
    if is_user_factory(name):
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import model factory {name!r}: {exc}") from None
        params = inspect.signature(factory).parameters
        extra = {"num_classes": num_classes} if "num_classes" in params and "num_classes" not in kwargs else {}
        model = factory(**kwargs, **extra)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model factory {name!r} returned {type(model).__name__}, not an nn.Module")
        return model
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(ARCHITECTURES.names())}, or 'pkg.mod:factory')")
    check_model_kwargs(name, kwargs)
    return ARCHITECTURES.get(name)(in_channels, num_classes, image_size, **kwargs)
