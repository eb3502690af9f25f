"""Layers of early-exit networks: exit heads, gradient rescaling, ensembles."""

import math
import numbers

import keras
from keras import ops

from keras_slim.training import boosting


def _positive_ints(name, values, owner):
    values = tuple(values or ())
    if any(
        isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1
        for v in values
    ):
        raise ValueError(
            f"{owner}: `{name}` must be a sequence of positive integers; got "
            f"{values!r}."
        )
    return tuple(int(v) for v in values)


@keras.saving.register_keras_serializable(package="keras_slim")
class ExitHead(keras.layers.Layer):
    """A small classifier that reads intermediate features: an early exit.

    `conv -> BN -> activation` blocks (one per entry of `filters`), a global
    pooling, optional hidden dense layers and dropout, and a dense layer with
    `num_classes` logits (no softmax). MSDNet's CIFAR head is
    `ExitHead(filters=(128, 128), strides=2)`.

    `keras_slim.add_exits` places a copy of an `ExitHead` after each chosen
    layer of a backbone and then inlines it: the early-exit network holds
    the head's layers themselves (`exit1_head_conv1`, ...), so `slim()`,
    `strip()`, `profile()` and the exporters treat them like any layer.

    Args:
        num_classes: Logits of the head. None: filled in by `add_exits` from
            the backbone's output.
        filters: Output channels of each conv block (may be empty: pool and
            dense only).
        kernel_size: Kernel size of the convolutions.
        strides: Stride of every convolution.
        pool: "avg" or "max" global pooling.
        hidden_units: Units of dense layers between pooling and the logits.
        dropout: Dropout rate before the logits.
        activation: Activation after each conv block and hidden layer.
        use_bn: BatchNormalization after each convolution (convolutions
            then have no bias).
        bn_momentum: Momentum of those BatchNormalization layers.
        **kwargs: Passed to `keras.layers.Layer` (e.g. `name`).

    Call arguments:
        inputs: A 4D tensor (channels last); or 2D when `filters` is empty.
        training: Passed to BN and dropout.

    Example:

    >>> head = keras_slim.layers.ExitHead(10, filters=(32,))
    >>> logits = head(np.zeros((2, 16, 16, 8), "float32"))  # (2, 10)
    >>> model = keras_slim.add_exits(backbone, after=["block2_out"],
    ...                              head=keras_slim.layers.ExitHead())

    Reference:
        Huang et al., Multi-Scale Dense Networks for Resource Efficient
        Image Classification, ICLR 2018 (https://arxiv.org/abs/1703.09844).
    """

    def __init__(
        self,
        num_classes=None,
        filters=(64,),
        kernel_size=3,
        strides=2,
        pool="avg",
        hidden_units=(),
        dropout=0.0,
        activation="relu",
        use_bn=True,
        bn_momentum=0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = f"ExitHead '{self.name}'"
        if num_classes is not None and (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1
        ):
            raise ValueError(
                f"{owner}: num_classes must be a positive integer or None; "
                f"got {num_classes!r}."
            )
        if pool not in ("avg", "max"):
            raise ValueError(
                f"{owner}: pool must be 'avg' or 'max'; got {pool!r}."
            )
        if not (isinstance(dropout, numbers.Real) and 0 <= dropout < 1):
            raise ValueError(
                f"{owner}: dropout must be in [0, 1); got {dropout!r}."
            )
        self.num_classes = None if num_classes is None else int(num_classes)
        self.filters = _positive_ints("filters", filters, owner)
        self.kernel_size = kernel_size
        self.strides = strides
        self.pool = pool
        self.hidden_units = _positive_ints("hidden_units", hidden_units,
                                           owner)
        self.dropout = float(dropout)
        self.activation = activation
        self.use_bn = bool(use_bn)
        self.bn_momentum = float(bn_momentum)
        self.head_layers = []

    def build(self, input_shape):
        if self.num_classes is None:
            raise ValueError(
                f"ExitHead '{self.name}' needs num_classes to be built "
                "(add_exits fills it in from the backbone)."
            )
        if self.filters and len(input_shape) != 4:
            raise ValueError(
                f"ExitHead '{self.name}' with conv blocks needs 4D inputs "
                f"(batch, height, width, channels); got {tuple(input_shape)}."
            )
        layers = []
        for i, filters in enumerate(self.filters, start=1):
            layers.append(keras.layers.Conv2D(
                filters, self.kernel_size, strides=self.strides,
                padding="same", use_bias=not self.use_bn,
                kernel_initializer="he_normal", name=f"{self.name}_conv{i}",
            ))
            if self.use_bn:
                layers.append(keras.layers.BatchNormalization(
                    momentum=self.bn_momentum, epsilon=1e-5,
                    name=f"{self.name}_bn{i}",
                ))
            layers.append(keras.layers.Activation(
                self.activation, name=f"{self.name}_act{i}"
            ))
        if len(input_shape) == 4:
            pooling = (
                keras.layers.GlobalAveragePooling2D
                if self.pool == "avg" else keras.layers.GlobalMaxPooling2D
            )
            layers.append(pooling(name=f"{self.name}_pool"))
        for i, units in enumerate(self.hidden_units, start=1):
            layers.append(keras.layers.Dense(
                units, activation=self.activation, name=f"{self.name}_fc{i}"
            ))
        if self.dropout:
            layers.append(keras.layers.Dropout(
                self.dropout, name=f"{self.name}_dropout"
            ))
        layers.append(keras.layers.Dense(
            self.num_classes, name=f"{self.name}_logits"
        ))
        shape = tuple(input_shape)
        for layer in layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.head_layers = layers

    def call(self, inputs, training=None):
        x = inputs
        for layer in self.head_layers:
            x = layer(x, training=training)
        return x

    def inline(self, inputs):
        """Calls the head's layers one by one on a symbolic tensor.

        The resulting functional graph holds the head's own layers (same
        weights) instead of one opaque `ExitHead` node. `add_exits` does
        this so that every tool sees ordinary layers.

        Args:
            inputs: A `KerasTensor` of the functional graph being built.

        Returns:
            The logits `KerasTensor`.
        """
        if not self.built:
            self.build(inputs.shape)
        x = inputs
        for layer in self.head_layers:
            x = layer(x)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            filters=list(self.filters),
            kernel_size=self.kernel_size,
            strides=self.strides,
            pool=self.pool,
            hidden_units=list(self.hidden_units),
            dropout=self.dropout,
            activation=self.activation,
            use_bn=self.use_bn,
            bn_momentum=self.bn_momentum,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_slim")
class GradientRescale(keras.layers.Layer):
    """Identity in the forward pass; multiplies the gradient by `scale`.

    MSDNet's gradient equilibrium (used by BoostNet) places two of these
    where an exit head branches off the backbone (see
    `keras_slim.training.boosting.gradient_rescale_scales`). The forward
    pass is exactly the identity, so inference and export are unchanged.

    Args:
        scale: A finite number >= 0.
        **kwargs: Passed to `keras.layers.Layer`.

    Example:

    >>> layer = GradientRescale(0.5)
    >>> x = tf.Variable([1.0, 2.0])
    >>> with tf.GradientTape() as tape:
    ...     y = tf.reduce_sum(layer(x))
    >>> tape.gradient(y, x)  # [0.5, 0.5]
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or (
            not math.isfinite(scale) or scale < 0
        ):
            raise ValueError(
                f"GradientRescale '{self.name}': scale must be a finite "
                f"number >= 0; got {scale!r}."
            )
        self.scale = float(scale)
        self.supports_masking = True

    def call(self, inputs):
        if self.scale == 1.0:
            return inputs
        scale = self.scale

        @ops.custom_gradient
        def rescale(x):
            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return ops.multiply(ops.cast(scale, upstream.dtype), upstream)

            return ops.copy(x), grad

        return rescale(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="keras_slim")
class EnsembleLogits(keras.layers.Layer):
    """`P_n = f_n + weight * P_{n-1}`: one step of the boosted ensemble.

    Used where the ensemble must be part of a graph (the staged and per-exit
    exports); computed by `keras_slim.training.boosting.ensemble_step`, the
    formula training and `EarlyExitModel.call` use.

    Args:
        weight: The exit's ensemble weight `t_n` (>= 0).
        **kwargs: Passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `[f_n, P_{n-1}]`.

    Example:

    >>> p2 = EnsembleLogits(0.5)([f2, p1])
    """

    def __init__(self, weight, **kwargs):
        super().__init__(**kwargs)
        (self.weight,) = boosting.resolve_ensemble_weights([weight], 1)

    def call(self, inputs):
        exit_logits, previous = inputs
        return boosting.ensemble_step(exit_logits, previous, self.weight)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


@keras.saving.register_keras_serializable(package="keras_slim")
class ExitConfidence(keras.layers.Layer):
    """The confidence of an exit: the max softmax probability of its logits.

    The staged exports compute it in the graph, so an app compares one
    number with the exit's threshold (`EarlyExitModel.predict_dynamic`
    computes the same value from the logits, in float64).

    Example:

    >>> confidence = ExitConfidence()(logits)  # shape (batch,)
    """

    def call(self, inputs):
        return ops.max(ops.softmax(inputs, axis=-1), axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])
