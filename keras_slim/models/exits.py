"""A multi-exit CIFAR ResNet: exits every few residual blocks."""

from keras_slim.early_exit.build import add_exits
from keras_slim.layers.exit_head import ExitHead
from keras_slim.models.resnet import resnet_cifar


def resnet_exits(
    depth=20,
    input_shape=(32, 32, 3),
    num_classes=10,
    exit_every=2,
    head_filters=(32,),
    head_strides=2,
    ensemble_weight=0.5,
    gradient_rescale=True,
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
    """The He et al. CIFAR ResNet with an exit every `exit_every` blocks.

    The backbone is `keras_slim.models.resnet_cifar(depth)`; after every
    `exit_every`-th residual block (its final ReLU, which every path passes
    through) an `ExitHead(filters=head_filters, strides=head_strides)`
    classifies the features; the ResNet's own classifier is the last exit.
    ResNet-20 (9 blocks) with `exit_every=2` has exits after blocks 2, 4, 6
    and 8 and the final one: 5 exits. Trained with BoostNet's boosting
    (`ensemble_weight=0.5`) or plainly (`ensemble_weight=0`), with MSDNet's
    gradient equilibrium by default.

    Args:
        depth: `6 * n + 2` (20, 32, 44, 56, 110).
        input_shape: `(H, W, C)` of the images.
        num_classes: Classes of every exit.
        exit_every: Blocks between exits (>= 1).
        head_filters: Conv channels of each exit head (see `ExitHead`).
        head_strides: Stride of the head convolutions.
        ensemble_weight: BoostNet's `t` (see `EarlyExitModel`).
        gradient_rescale: MSDNet's gradient equilibrium on/off.
        width_multiplier: Builds the backbone at this width (plain).
        width_range, widths, divisor: Width settings of a slimmable network
            (backbone and heads); see `keras_slim.slim`.
        slimmable: False builds an early-exit network without slim layers
            (one width, 1.0).
        bn_momentum: Momentum of every BatchNormalization.
        weight_decay: Optional L2 factor on the backbone's kernels.
        name: Model name (default `f"resnet{depth}_exits"`).
        **slim_kwargs: More arguments of `keras_slim.slim`.

    Returns:
        A `keras_slim.EarlyExitModel`.

    Raises:
        ValueError: for a bad depth, or an `exit_every` that leaves no early
            exit.

    Example:

    >>> model = keras_slim.models.resnet_exits(depth=20, slimmable=False)
    >>> [e["name"] for e in model.exits]
    ['exit1', 'exit2', 'exit3', 'exit4', 'exit5']
    >>> sliced = keras_slim.models.resnet_exits(width_range=(0.25, 1.0))

    Reference:
        He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition,
        CVPR 2016 (https://arxiv.org/abs/1512.03385); Yu et al., Boosted
        Dynamic Neural Networks, AAAI 2023 (https://arxiv.org/abs/2211.16726).
    """
    backbone = resnet_cifar(
        depth=depth,
        input_shape=input_shape,
        num_classes=num_classes,
        width_multiplier=width_multiplier,
        divisor=divisor,
        slimmable=False,
        bn_momentum=bn_momentum,
        weight_decay=weight_decay,
    )
    blocks_per_stage = (depth - 2) // 6
    blocks = [
        f"stage{stage}_block{block}_relu"
        for stage in (1, 2, 3)
        for block in range(1, blocks_per_stage + 1)
    ]
    if isinstance(exit_every, bool) or not isinstance(exit_every, int) or (
        exit_every < 1
    ):
        raise ValueError(
            f"exit_every must be a positive integer; got {exit_every!r}."
        )
    # The last block feeds the backbone's own classifier (the last exit).
    after = blocks[exit_every - 1:-1:exit_every]
    if not after:
        raise ValueError(
            f"exit_every={exit_every} leaves no early exit in a ResNet-{depth} "
            f"({len(blocks)} blocks); use at most {len(blocks) - 1}."
        )
    head = ExitHead(
        filters=tuple(head_filters), strides=head_strides,
        bn_momentum=bn_momentum,
    )
    settings = dict(slim_kwargs)
    if slimmable:
        settings.update(width_range=width_range, widths=widths,
                        divisor=divisor)
    return add_exits(
        backbone,
        after=after,
        head=head,
        ensemble_weight=ensemble_weight,
        gradient_rescale=gradient_rescale,
        name=name or f"resnet{depth}_exits",
        **settings,
    )
