"""Small CNN builders as flat ``nn.Sequential`` networks: a digit classifier for video frames
and a VGG-style network for 224x224 images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["VGG11_WIDTHS", "build_digit_cnn", "build_vgg_trunk"]

VGG11_WIDTHS = (64, 128, 256, 256, 512, 512, 512, 512)
"""Output channels of VGG-11's eight 3x3 convolutions (configuration "A" of Simonyan and
Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", 2015)."""

# In VGG-11 a 2x2 max pool follows convolutions 1, 2, 4, 6 and 8 (0-based below).
_VGG11_POOL_AFTER = frozenset({0, 1, 3, 5, 7})


def _check_widths(name: str, widths: Sequence[int], length: int | None = None) -> tuple[int, ...]:
    values = tuple(widths)
    if length is not None and len(values) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(values)}: {values!r}")
    if not values or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in values):
        raise ValueError(f"{name} must be positive ints, got {values!r}")
    return values


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def build_digit_cnn(
    channels: Sequence[int] = (16, 32, 64),
    n_classes: int = 10,
    in_channels: int = 1,
    dropout: float = 0.1,
) -> nn.Sequential:
    """A small CNN that says which digit a frame shows, wherever in the frame it is.

    Usage::

        model = build_digit_cnn()            # for 1 x 64 x 64 frames
        logits = model(frames)               # (N, 10)

    Layers: ``[Conv2d 3x3 pad 1, BatchNorm2d, ReLU, MaxPool2d 2] * len(channels)`` (the
    trunk: a 64x64 frame ends as ``channels[-1]`` maps of 8x8 with the default three
    blocks), then the head ``AdaptiveMaxPool2d(1), Flatten, (Dropout), Linear``. The global
    max pool makes the answer independent of where the digit is, so a network trained on
    digits at random positions (``mlsys.data.video.digit_training_set``) labels each frame
    of a one-digit video (``moving_digits(digits=1)``). It works on any frame size whose
    sides are at least ``2 ** len(channels)``.

    Raises:
        ValueError: a width is not a positive int, ``n_classes`` is below 2 or ``dropout``
            is outside [0, 1).
    """
    widths = _check_widths("channels", channels)
    _check_positive("in_channels", in_channels)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    layers: list[nn.Module] = []
    width = in_channels
    for out in widths:
        layers += [
            nn.Conv2d(width, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        width = out
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(float(dropout)))
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def build_vgg_trunk(
    widths: Sequence[int] = VGG11_WIDTHS,
    n_classes: int | None = 10,
    in_channels: int = 3,
    image_size: int = 224,
    batch_norm: bool = True,
) -> nn.Sequential:
    """A VGG-11-style network: eight 3x3 convolutions in five max-pooled blocks.

    Usage::

        model = build_vgg_trunk().eval()                      # full VGG-11 widths
        model(torch.randn(1, 3, 224, 224)).shape              # (1, 10)
        small = build_vgg_trunk([w // 4 for w in VGG11_WIDTHS])

    Layers: ``Conv2d 3x3 pad 1, (BatchNorm2d), ReLU`` for each width, with a 2x2 max pool
    after convolutions 1, 2, 4, 6 and 8 as in VGG-11, so a 224x224 image ends as
    ``widths[-1]`` maps of 7x7. The head is ``Flatten, Linear(widths[-1] * 7 * 7,
    n_classes)`` (one layer, not VGG's three 4096-wide ones, whose 120 M weights would
    dominate the cost of a frame); ``n_classes=None`` leaves the head out and the network
    returns the feature maps. Weights are initialised as torchvision does for VGG (Kaiming
    normal, fan-out), so activations keep their scale through the layers.

    Args:
        widths: output channels of the eight convolutions (default ``VGG11_WIDTHS``).
        n_classes: outputs of the linear head, or None for no head.
        in_channels: channels of the input image.
        image_size: the side of the (square) input; a multiple of 32.
        batch_norm: put a BatchNorm2d after each convolution.
    """
    sizes = _check_widths("widths", widths, length=8)
    _check_positive("in_channels", in_channels)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (five 2x2 pools), got {image_size}")
    if n_classes is not None:
        _check_positive("n_classes", n_classes)
    layers: list[nn.Module] = []
    width = in_channels
    for i, out in enumerate(sizes):
        conv = nn.Conv2d(width, out, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        assert conv.bias is not None
        nn.init.zeros_(conv.bias)
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        if i in _VGG11_POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
        width = out
    if n_classes is not None:
        side = image_size // 32
        linear = nn.Linear(width * side * side, n_classes)
        nn.init.normal_(linear.weight, 0, 0.01)
        nn.init.zeros_(linear.bias)
        layers += [nn.Flatten(), linear]
    return nn.Sequential(*layers)
