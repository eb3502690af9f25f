"""The CIFAR ResNets of He et al. (ResNet-20, -32, -44, -56, -110)."""

import keras

from keras_slim.models.lenet import _check_multiplier
from keras_slim.models.lenet import finalize
from keras_slim.models.lenet import scaled_channels

_STAGE_CHANNELS = (16, 32, 64)


def resnet_cifar(
    depth=20,
    input_shape=(32, 32, 3),
    num_classes=10,
    width_multiplier=1.0,
    width_range=(0.25, 1.0),
    widths=None,
    divisor=1,
    slimmable=True,
    bn_momentum=0.9,
    weight_decay=None,
    name=None,
    **slim_kwargs,
):
    """The He et al. CIFAR ResNet with `(depth - 2) / 6` blocks per stage.

    A 3x3 stem with 16 channels, three stages of basic blocks
    (conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU) with 16, 32
    and 64 channels, the last two starting with stride 2, global average
    pooling and a dense classifier. Where a block changes the shape, the
    shortcut is a 1x1 convolution with BN (option B): the parameter-free
    option A pads with zeros, which `slim()` cannot tie to a width, while a
    projection's output joins the block's channel group through the `Add`.
    That adds 2,752 parameters to the paper's option-A count (ResNet-20:
    0.27M, ResNet-56: 0.85M).

    Args:
        depth: `6 * n + 2`: 20, 32, 44, 56, 110, ...
        input_shape: `(H, W, C)` of the images.
        num_classes: Outputs of the classifier (logits).
        width_multiplier: Builds the plain network at this width.
        width_range: `(min, max)` width of a universally slimmable network.
        widths: A fixed list of widths instead (S-Net).
        divisor: Channel counts are multiples of this.
        slimmable: False returns the stock Keras model.
        bn_momentum: Momentum of every BatchNormalization.
        weight_decay: Optional L2 factor on convolution and dense kernels
            (the paper trains with 1e-4).
        name: Model name (default `f"resnet{depth}"`).
        **slim_kwargs: More arguments of `keras_slim.slim`.

    Returns:
        A `keras_slim.SlimmableModel`, or a `keras.Model` when
        `slimmable=False`.

    Raises:
        ValueError: if `depth` is not `6 * n + 2` with `n >= 1`.

    Example:

    >>> model = keras_slim.models.resnet_cifar(depth=32, widths=[0.5, 1.0])
    >>> model.set_width(0.5)

    Reference:
        He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition,
        CVPR 2016, section 4.2 (https://arxiv.org/abs/1512.03385).
    """
    _check_multiplier(width_multiplier)
    if isinstance(depth, bool) or not isinstance(depth, int) or (
        depth < 8 or (depth - 2) % 6
    ):
        raise ValueError(
            "A CIFAR ResNet has depth 6 * n + 2 (20, 32, 44, 56, 110, ...); "
            f"got depth={depth!r}."
        )
    blocks = (depth - 2) // 6
    min_channels = slim_kwargs.get("min_channels")
    regularizer = (
        keras.regularizers.L2(weight_decay) if weight_decay else None
    )

    def conv(x, filters, kernel_size, strides, label):
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=regularizer,
            name=f"{label}_conv",
        )(x)

    def bn(x, label):
        return keras.layers.BatchNormalization(
            momentum=bn_momentum, epsilon=1e-5, name=f"{label}_bn"
        )(x)

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    channels = scaled_channels(16, width_multiplier, divisor, min_channels)
    x = conv(inputs, channels, 3, 1, "stem")
    x = keras.layers.ReLU(name="stem_relu")(bn(x, "stem"))
    for stage, base in enumerate(_STAGE_CHANNELS, start=1):
        filters = scaled_channels(base, width_multiplier, divisor, min_channels)
        for block in range(1, blocks + 1):
            label = f"stage{stage}_block{block}"
            strides = 2 if stage > 1 and block == 1 else 1
            shortcut = x
            y = conv(x, filters, 3, strides, f"{label}_1")
            y = keras.layers.ReLU(name=f"{label}_1_relu")(bn(y, f"{label}_1"))
            y = bn(conv(y, filters, 3, 1, f"{label}_2"), f"{label}_2")
            if strides != 1 or x.shape[-1] != filters:
                shortcut = bn(
                    conv(x, filters, 1, strides, f"{label}_shortcut"),
                    f"{label}_shortcut",
                )
            x = keras.layers.Add(name=f"{label}_add")([shortcut, y])
            x = keras.layers.ReLU(name=f"{label}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(
        num_classes, kernel_regularizer=regularizer, name="classifier"
    )(x)
    model = keras.Model(inputs, outputs, name=name or f"resnet{depth}")
    return finalize(
        model, slimmable, width_range, widths, divisor=divisor, **slim_kwargs
    )


def resnet20(**kwargs):
    """ResNet-20 for CIFAR (0.27M parameters); see `resnet_cifar`.

    Example:

    >>> model = keras_slim.models.resnet20(width_range=(0.25, 1.0))
    """
    return resnet_cifar(depth=20, **kwargs)


def resnet56(**kwargs):
    """ResNet-56 for CIFAR (0.85M parameters); see `resnet_cifar`.

    Example:

    >>> plain = keras_slim.models.resnet56(slimmable=False)
    """
    return resnet_cifar(depth=56, **kwargs)
