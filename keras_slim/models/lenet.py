"""LeNet-3C1L, the small CIFAR network of the Any-Width Networks paper.

Also holds `finalize`, the one step every zoo builder ends with: a stock
Keras model, slimmed by `keras_slim.slim` unless the caller asks for the
plain network. Keeping a single conversion path means a zoo model and a
user's own model converted with `slim()` behave identically.
"""

import math

import keras

from keras_slim import width as width_lib
from keras_slim.convert import slim


def finalize(
    model,
    slimmable,
    width_range,
    widths,
    divisor=1,
    triangular=False,
    **slim_kwargs,
):
    """Returns `model` itself, or `keras_slim.slim(model, ...)`.

    Args:
        model: The stock functional Keras model.
        slimmable: False returns `model` unchanged.
        width_range, widths, divisor, triangular, **slim_kwargs: Passed to
            `keras_slim.slim`.

    Returns:
        A `keras.Model` or a `keras_slim.SlimmableModel`.
    """
    if not slimmable:
        return model
    return slim(
        model,
        width_range=width_range,
        widths=widths,
        divisor=divisor,
        triangular=triangular,
        **slim_kwargs,
    )


def scaled_channels(channels, width_multiplier, divisor=1, min_channels=None):
    """Channels of a plain network built at `width_multiplier`.

    Uses the rule `keras_slim.slim` uses for a width
    (`keras_slim.width.channel_count`), so a plain network trained at width
    0.25 has exactly the layer sizes of the slimmable network run at 0.25
    (the reference networks of the papers).
    """
    return width_lib.channel_count(
        channels, width_multiplier, divisor, min_channels
    )


def _check_multiplier(width_multiplier):
    if isinstance(width_multiplier, bool) or not (
        isinstance(width_multiplier, (int, float)) and width_multiplier > 0
    ):
        raise ValueError(
            "`width_multiplier` must be a positive number; got "
            f"{width_multiplier!r}."
        )


def lenet_3c1l(
    input_shape=(32, 32, 3),
    num_classes=10,
    n=32,
    width_multiplier=1.0,
    width_range=(0.25, 1.0),
    widths=None,
    triangular=False,
    expand_sqrt2=False,
    slimmable=True,
    bn_momentum=0.9,
    padding="valid",
    name=None,
    **slim_kwargs,
):
    """LeNet-3C1L: three convolutions and one dense layer.

    The architecture of the Any-Width Networks paper's CIFAR-10 experiments
    (and of its public code): conv3x3(n)-BN-ReLU, conv3x3(n)-BN-ReLU,
    maxpool 2x2, conv5x5(n)-BN-ReLU, maxpool 2x2, Flatten, Dense(classes).
    Convolutions are unpadded ("valid", as in the paper's code) and
    bias-free (each is followed by BN, which has its own offset), so a
    32x32 image ends as 5x5xn features before the classifier.

    Args:
        input_shape: `(H, W, C)` of the images. With `padding="valid"` the
            spatial size must be at least 18; use `padding="same"` for tiny
            inputs such as 8x8 digits.
        num_classes: Outputs of the classifier (logits, no softmax).
        n: Channels of every convolution at width 1.0.
        width_multiplier: Builds the network at this width (e.g. 0.25 for
            an individually trained reference network). Channels follow
            the rounding `slim()` uses, so it matches the slimmable
            network's sub-network at that width.
        width_range: `(min, max)` width of a universally slimmable network
            (US-Net, sandwich training; AWN+RS with `triangular=True`).
        widths: A fixed list of widths instead (S-Net with switchable BN;
            AWN k-width with `triangular=True`).
        triangular: Any-Width Networks: staircase (lower-triangular) kernel
            masks with one shared BN, exact at every width without BN
            calibration.
        expand_sqrt2: Uses `round(n * sqrt(2))` channels (45 for 32). A
            triangular mask zeroes about half of each square kernel, so
            this keeps the parameter count of a triangular network close
            to that of the dense one (the paper's fair comparison).
        slimmable: False returns the stock Keras model.
        bn_momentum: Momentum of every BatchNormalization (0.9, the papers'
            PyTorch 0.1; Keras' 0.99 adapts too slowly on small data).
        padding: `"valid"` (the paper) or `"same"`.
        name: Model name (default `"lenet_3c1l"`).
        **slim_kwargs: More arguments of `keras_slim.slim` (`divisor`,
            `min_channels`, `switchable_bn`, ...).

    Returns:
        A `keras_slim.SlimmableModel`, or a `keras.Model` when
        `slimmable=False`.

    Raises:
        ValueError: for a non-positive `width_multiplier` or `n`, or an
            input too small for the unpadded convolutions.

    Example:

    >>> awn = keras_slim.models.lenet_3c1l(
    ...     triangular=True, expand_sqrt2=True, width_range=(0.25, 1.0))
    >>> awn.set_width(0.42)  # exact without BN calibration
    >>> reference = keras_slim.models.lenet_3c1l(
    ...     width_multiplier=0.25, slimmable=False)

    Reference:
        Vu, Eder, Price & Frahm, Any-Width Networks, CVPR Workshops 2020
        (https://arxiv.org/abs/2012.03153).
    """
    _check_multiplier(width_multiplier)
    if int(n) < 1:
        raise ValueError(f"`n` must be a positive channel count; got {n}.")
    if padding not in ("valid", "same"):
        raise ValueError(f"`padding` must be 'valid' or 'same'; got {padding!r}.")
    height, width = input_shape[0], input_shape[1]
    if padding == "valid" and min(height, width) < 18:
        raise ValueError(
            f"LeNet-3C1L with padding='valid' needs inputs of at least "
            f"18x18 (two 3x3 and one 5x5 unpadded convolutions and two "
            f"poolings); got input_shape={tuple(input_shape)}. Pass "
            "padding='same' for small images."
        )
    base = int(round(n * math.sqrt(2))) if expand_sqrt2 else int(n)
    divisor = slim_kwargs.get("divisor", 1)
    channels = scaled_channels(
        base, width_multiplier, divisor, slim_kwargs.get("min_channels")
    )

    def conv_bn_relu(x, kernel_size, index):
        x = keras.layers.Conv2D(
            channels,
            kernel_size,
            padding=padding,
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"conv{index}",
        )(x)
        x = keras.layers.BatchNormalization(
            momentum=bn_momentum, epsilon=1e-5, name=f"bn{index}"
        )(x)
        return keras.layers.ReLU(name=f"relu{index}")(x)

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = conv_bn_relu(inputs, 3, 1)
    x = conv_bn_relu(x, 3, 2)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = conv_bn_relu(x, 5, 3)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    model = keras.Model(inputs, outputs, name=name or "lenet_3c1l")
    return finalize(
        model, slimmable, width_range, widths, triangular=triangular,
        **slim_kwargs,
    )
