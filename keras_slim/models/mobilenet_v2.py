"""MobileNetV2 for CIFAR-sized (32x32) and ImageNet-sized (224x224) inputs."""

import keras

from keras_slim.models.lenet import _check_multiplier
from keras_slim.models.lenet import finalize
from keras_slim.models.lenet import scaled_channels

# (expansion t, output channels c, blocks n, stride s) of the paper's Table 2.
_INVERTED_RESIDUALS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Inputs smaller than this use the CIFAR strides (see `mobilenet_v2`).
_SMALL_INPUT = 64


def mobilenet_v2(
    input_shape=(32, 32, 3),
    num_classes=10,
    width_multiplier=1.0,
    width_range=(0.35, 1.0),
    widths=None,
    divisor=8,
    slimmable=True,
    bn_momentum=0.9,
    small_inputs=None,
    dropout=0.0,
    weight_decay=None,
    official_channels=False,
    name=None,
    **slim_kwargs,
):
    """MobileNetV2 with inverted residual blocks, as in the (U)S-Net papers.

    A 3x3 stem with 32 channels, 17 inverted residual blocks (1x1 expansion
    by 6 except the first block, 3x3 depthwise, linear 1x1 projection, each
    followed by BN; ReLU6 after the first two), a residual `Add` when a
    block keeps its stride and channel count, a 1x1 convolution to 1280
    channels, global average pooling and a dense classifier.

    For small inputs (CIFAR, 32x32) the stem and the second stage use
    stride 1 instead of 2, as the common CIFAR ports do, so the last stage
    still sees 4x4 features; with 224x224 inputs the network is the
    ImageNet one (7x7 before pooling).

    Args:
        input_shape: `(H, W, C)` of the images.
        num_classes: Outputs of the classifier (logits).
        width_multiplier: Builds the plain network at this width (the
            MobileNetV2 `alpha`; channels rounded to multiples of
            `divisor`, the 1280 channels kept for widths <= 1).
        width_range: `(min, max)` width of a universally slimmable network
            (US-Net: 0.35 to 1.0).
        widths: A fixed list of widths instead (S-Net:
            `[0.35, 0.5, 0.75, 1.0]`).
        divisor: Channel counts are multiples of this (8, as the paper).
        slimmable: False returns the stock Keras model.
        bn_momentum: Momentum of every BatchNormalization.
        small_inputs: Whether to use the CIFAR strides. Defaults to True
            for inputs smaller than 64x64.
        dropout: Dropout rate before the classifier (0.2 in the paper's
            ImageNet setting).
        weight_decay: Optional L2 factor on the non-depthwise kernels.
        official_channels: Slim as the official US-MobileNetV2 code does:
            the 1280-channel last convolution keeps its channels at every
            width, and an expansion layer has `6 * make_divisible(C * w)`
            channels (its input's count times 6, via `slim(...,
            keep_ratio=...)`) instead of `make_divisible(6 * C * w)`. Its
            MACs per width then match the official model's (59.3M at 0.35,
            300.8M at 1.0, 224x224). The default slims the head too.
        name: Model name (default `"mobilenet_v2"`).
        **slim_kwargs: More arguments of `keras_slim.slim`.

    Returns:
        A `keras_slim.SlimmableModel`, or a `keras.Model` when
        `slimmable=False`.

    Example:

    >>> model = keras_slim.models.mobilenet_v2(width_range=(0.35, 1.0))
    >>> imagenet = keras_slim.models.mobilenet_v2(
    ...     input_shape=(224, 224, 3), num_classes=1000,
    ...     widths=[0.35, 0.5, 0.75, 1.0])

    Reference:
        Sandler et al., MobileNetV2: Inverted Residuals and Linear
        Bottlenecks, CVPR 2018 (https://arxiv.org/abs/1801.04381);
        Yu & Huang, Universally Slimmable Networks, ICCV 2019.
    """
    _check_multiplier(width_multiplier)
    if small_inputs is None:
        small_inputs = min(input_shape[0], input_shape[1]) < _SMALL_INPUT
    min_channels = slim_kwargs.get("min_channels")
    regularizer = (
        keras.regularizers.L2(weight_decay) if weight_decay else None
    )

    def channels(base):
        return scaled_channels(base, width_multiplier, divisor, min_channels)

    def conv(x, filters, kernel_size, strides, label):
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=regularizer,
            name=label,
        )(x)

    def bn(x, label, relu6=True):
        x = keras.layers.BatchNormalization(
            momentum=bn_momentum, epsilon=1e-5, name=f"{label}_bn"
        )(x)
        if relu6:
            x = keras.layers.ReLU(6.0, name=f"{label}_relu6")(x)
        return x

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = conv(inputs, channels(32), 3, 1 if small_inputs else 2, "stem")
    x = bn(x, "stem")
    index = 0
    for stage, (expansion, base, repeats, stride) in enumerate(
        _INVERTED_RESIDUALS
    ):
        if small_inputs and stage == 1:
            stride = 1  # keep 32x32 inputs at 4x4 before pooling
        out_channels = channels(base)
        for repeat in range(repeats):
            index += 1
            label = f"block{index}"
            strides = stride if repeat == 0 else 1
            in_channels = x.shape[-1]
            y = x
            if expansion != 1:
                # The hidden width follows the block's own input width, so
                # plain narrow networks match MobileNetV2's alpha scaling.
                y = conv(y, in_channels * expansion, 1, 1, f"{label}_expand")
                y = bn(y, f"{label}_expand")
            y = keras.layers.DepthwiseConv2D(
                3,
                strides=strides,
                padding="same",
                use_bias=False,
                depthwise_initializer="he_normal",
                name=f"{label}_depthwise",
            )(y)
            y = bn(y, f"{label}_depthwise")
            y = conv(y, out_channels, 1, 1, f"{label}_project")
            y = bn(y, f"{label}_project", relu6=False)
            if strides == 1 and in_channels == out_channels:
                y = keras.layers.Add(name=f"{label}_add")([x, y])
            x = y
    # As in the paper, the last convolution keeps 1280 channels for widths
    # <= 1 (a slimmable network still slims it with the width).
    last = 1280 if width_multiplier <= 1.0 else channels(1280)
    x = bn(conv(x, last, 1, 1, "head"), "head")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, kernel_regularizer=regularizer, name="classifier"
    )(x)
    model = keras.Model(inputs, outputs, name=name or "mobilenet_v2")
    if official_channels and slimmable:
        slim_kwargs.setdefault("fixed_layers", ["head"])
        slim_kwargs.setdefault("keep_ratio", [
            layer.name for layer in model.layers
            if layer.name.endswith("_expand")
        ])
    return finalize(
        model, slimmable, width_range, widths, divisor=divisor, **slim_kwargs
    )
