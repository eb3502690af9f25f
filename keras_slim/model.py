"""`SlimmableModel`: one network, many widths, trained with `model.fit`."""

import hashlib
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_slim import graph
from keras_slim import width as width_lib
from keras_slim.layers import scope as aw
from keras_slim.layers.convolution import SlimKernelMixin
from keras_slim.layers.normalization import SwitchableBatchNormalization
from keras_slim.layers.normalization import _SlimNormalizationBase
from keras_slim.training import losses as losses_lib
from keras_slim.training import steps


def _accuracy(y_true, y_pred):
    # "accuracy" means sparse or categorical accuracy depending on the labels,
    # decided from static shapes at trace time, as Keras' compile does.
    if y_true.shape.rank == y_pred.shape.rank and y_true.shape[-1] != 1:
        return keras.metrics.categorical_accuracy(y_true, y_pred)
    return keras.metrics.sparse_categorical_accuracy(y_true, y_pred)


def _metric_for_width(spec, tag):
    """A fresh metric object named `<name>_<tag>` built from a compile spec."""
    if isinstance(spec, str):
        if spec in ("accuracy", "acc"):
            return keras.metrics.MeanMetricWrapper(_accuracy, f"{spec}_{tag}")
        metric = keras.metrics.get(spec)
        name = spec
    else:
        metric, name = spec, getattr(spec, "name", None)
    if isinstance(metric, keras.metrics.Metric):
        config = dict(metric.get_config(), name=f"{metric.name}_{tag}")
        return type(metric).from_config(config)
    if isinstance(metric, type) and issubclass(metric, keras.metrics.Metric):
        instance = metric()
        return type(instance).from_config(
            dict(instance.get_config(), name=f"{instance.name}_{tag}")
        )
    if callable(metric):
        name = name or getattr(metric, "__name__", "metric")
        return keras.metrics.MeanMetricWrapper(metric, f"{name}_{tag}")
    raise ValueError(
        f"Unsupported metric {spec!r}: pass a metric name, a "
        "keras.metrics.Metric or a function (y_true, y_pred) -> values."
    )


@keras.saving.register_keras_serializable(package="keras_slim")
class SlimmableModel(keras.Model):
    """A network that runs at any width of a range, or of a fixed list.

    Wraps a functional network built from `keras_slim.layers` (usually made
    by `keras_slim.slim`). The width is a number in `width_range` or a dict
    of layer name -> channels (a per-layer configuration, as AutoSlim finds).

    - `set_width(w)` sets the width `predict`, `evaluate`, `__call__` and
      export use; it is held in variables, so traced functions follow it.
    - `fit` trains several widths per step. With `widths=None` it uses the
      sandwich rule (US-Net): the max width, the min width and
      `sandwich_size - 2` random widths, their gradients summed into one
      optimizer step, the narrower widths optionally learning from the max
      width's predictions (inplace distillation). With a fixed `widths`
      list (S-Net) every listed width trains every step.
    - Per-width losses and metrics of the fixed widths are logged as e.g.
      `loss_w0.25` and `accuracy_w0.25`.

    Args:
        network: A built functional `keras.Model` made of slim layers.
        width_range: `(min_width, max_width)` of a universally slimmable
            network. Max may exceed 1.0 (e.g. AutoSlim's 1.5x supernet):
            the network's layers are then built at the max width.
        widths: A fixed list of widths (S-Net); the range becomes its min
            and max. Required when the network has
            `SwitchableBatchNormalization`. May instead be a list of
            configurations (dicts layer name -> channels, e.g. AutoSlim's
            searched ones, trained together as one S-Net); `width_range`
            then stays as given (its max sets the layers' channels).
        divisor: Channel counts are multiples of this.
        min_channels: Smallest channel count of any layer (default divisor).
        outputs_logits: Whether the network outputs logits (for
            distillation); False when it ends in a softmax.
        base_channels: dict channel group -> channels at width 1.0.
            Defaults to the built channels divided by the max width.
        derived_groups: dict channel group -> `(parent, numerator,
            denominator)`: groups whose count is that fraction of their
            parent's (see `keras_slim.width.ChannelPlan`).
        group_divisors: dict channel group -> divisor, for groups whose
            counts must be multiples of something else than `divisor`.
        slim_options: The `keras_slim.slim` arguments the network was
            made with (dict, saved with the model), or None. `add_exits`
            and the trainers rebuild a network with the same options.
        calibrations: Internal: descriptions of stored BN calibrations.
        width: The width to start at (default: the max width); a saved
            model records the width it was saved at here.
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Example:

    >>> model = keras_slim.slim(base_model, width_range=(0.25, 1.0))
    >>> model.compile(
    ...     "adam",
    ...     keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     metrics=["accuracy"], sandwich_size=4)
    >>> model.fit(train_ds, epochs=30)
    >>> keras_slim.calibrate_bn(model, train_ds, widths=[0.25, 0.5, 1.0])
    >>> model.set_width(0.5)
    >>> model.evaluate(test_ds)

    Reference:
        Yu & Huang, Universally Slimmable Networks and Improved Training
        Techniques, ICCV 2019 (https://arxiv.org/abs/1903.05134).
    """

    def __init__(
        self,
        network,
        width_range=(0.25, 1.0),
        widths=None,
        divisor=1,
        min_channels=None,
        outputs_logits=True,
        base_channels=None,
        derived_groups=None,
        group_divisors=None,
        slim_options=None,
        calibrations=None,
        width=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, keras.Model) or not network.built:
            raise ValueError(
                "`network` must be a built keras.Model made of keras_slim "
                f"layers; got {network!r}."
            )
        self.network = network
        configs = widths is not None and width_lib.are_configs(widths)
        if widths is not None and not configs:
            widths = sorted(
                width_lib.validate_width(w, (1e-9, float("inf")))
                for w in widths
            )
            if len(set(widths)) != len(widths):
                raise ValueError(f"`widths` has duplicates: {widths}.")
            width_range = (widths[0], widths[-1])
        elif configs:
            # Searched configurations (AutoSlim): channels per layer within
            # the range's max width; ordered by size once the groups are known.
            widths = [{str(k): int(v) for k, v in w.items()} for w in widths]
        self.widths = widths
        self.width_range = width_lib.validate_width_range(width_range)
        self.divisor = int(divisor)
        if self.divisor < 1:
            raise ValueError(f"`divisor` must be >= 1; got {divisor}.")
        self.min_channels = (
            self.divisor if min_channels is None else int(min_channels)
        )
        self.outputs_logits = bool(outputs_logits)
        self.calibrations = dict(calibrations or {})
        self.base_channels = {
            str(g): float(c) for g, c in (base_channels or {}).items()
        }
        self.derived_groups = {
            str(g): [str(p), int(n), int(d)]
            for g, (p, n, d) in (derived_groups or {}).items()
        }
        self.group_divisors = {
            str(g): int(v) for g, v in (group_divisors or {}).items()
        }
        self.slim_options = None if slim_options is None else dict(
            slim_options)

        self._find_slim_layers()
        if configs:
            counts = [self.channels_for(w) for w in widths]
            if len({tuple(c) for c in counts}) != len(counts):
                raise ValueError(
                    "`widths` has configurations with the same channels."
                )
            order = sorted(range(len(widths)), key=lambda i: sum(counts[i]))
            self.widths = [widths[i] for i in order]
        # The width used by predict/evaluate/export, as variables so that a
        # traced function follows set_width without retracing.
        self._active_channels = keras.Variable(
            np.asarray(self.full_channels, "int32"),
            dtype="int32",
            trainable=False,
            name="active_channels",
            aggregation="only_first_replica",
        )
        self._active_width_index = keras.Variable(
            len(self.widths) - 1 if self.widths else 0,
            dtype="int32",
            trainable=False,
            name="active_width_index",
            aggregation="only_first_replica",
        )
        self._current_width = self.width_range[1]
        self.sandwich_size = 4
        self.inplace_distillation = True
        self.per_replica_widths = False
        self.width_seed = 0
        self._width_metrics = {}
        self.built = True
        if width is None and configs:
            width = self.widths[-1]  # the largest configuration
        if width is not None:
            # A loaded model: its variables hold this width's channels.
            self.set_width(width)

    # ---------------------------------------------------------------- layers
    def _find_slim_layers(self):
        groups = {}
        self.bn_layers = []
        self._group_of_layer = {}
        kernels = []
        for layer in graph.all_layers(self.network):
            if isinstance(layer, SlimKernelMixin):
                kernels.append(layer)
            if isinstance(layer, SlimKernelMixin) and layer.slim_out:
                for group, full in layer.output_groups.items():
                    if groups.setdefault(group, full) != full:
                        raise ValueError(
                            f"Channel group '{group}' ties layers with "
                            f"different channel counts ({groups[group]} and "
                            f"{full}, at layer '{layer.name}')."
                        )
                if layer.output_layout is None:
                    self._group_of_layer[layer.name] = layer.channel_group
            if isinstance(layer, _SlimNormalizationBase):
                self.bn_layers.append(layer)
                if isinstance(layer, SwitchableBatchNormalization):
                    if not self.widths or layer.num_widths != len(self.widths):
                        raise ValueError(
                            f"Layer '{layer.name}' switches between "
                            f"{layer.num_widths} widths; pass the model the "
                            "same number of `widths` (S-Net), got "
                            f"{self.widths}."
                        )
        self.channel_groups = list(groups)
        self.full_channels = [groups[g] for g in self.channel_groups]
        # Channels at width 1.0; layers are built at the max width.
        self.channel_plan = width_lib.ChannelPlan(
            self.channel_groups,
            base={
                g: self.base_channels.get(g, full / self.width_range[1])
                for g, full in groups.items()
            },
            full=groups,
            divisor=self.divisor,
            min_channels=self.min_channels,
            group_divisors=self.group_divisors,
            derived={g: tuple(v) for g, v in self.derived_groups.items()},
        )
        # Private BN rows exist for the listed widths only; with a shared BN
        # the `widths` are just the ones trained, and any width in the range
        # runs (exactly, for triangular networks).
        self.switchable = any(
            isinstance(layer, SwitchableBatchNormalization)
            for layer in self.bn_layers
        )
        self.exact_without_calibration = all(
            layer.triangular
            for layer in kernels
            if layer.slim_in and layer.slim_out
        ) and not self.switchable

    def get_layer(self, name=None, index=None):
        """Looks a layer up in the wrapped network."""
        return self.network.get_layer(name=name, index=index)

    # ---------------------------------------------------------------- widths
    def channels_for(self, width):
        """Channel count per channel group for a width or a configuration.

        Args:
            width: A number in `width_range` or a dict layer name ->
                channels. Layers a configuration does not name keep their
                full channel count.

        Returns:
            A list aligned with `channel_groups`.

        Example:

        >>> model.channels_for(0.5)
        [16, 32, 64]
        """
        if isinstance(width, dict):
            return self._channels_for_config(width)
        width = self._validate_width(width)
        return self.channel_plan.counts(width).tolist()

    def _validate_width(self, width):
        width = width_lib.validate_width(width, self.width_range)
        if self.widths is not None and isinstance(self.widths[0], dict):
            if self.switchable:
                raise ValueError(
                    "This network switches between its configurations "
                    "(dicts layer name -> channels) only (S-Net); got width "
                    f"{width}."
                )
            return width
        if self.widths is not None:
            matches = [w for w in self.widths if abs(w - width) < 1e-6]
            if matches:
                width = matches[0]
            elif self.switchable:
                raise ValueError(
                    f"This network switches between the widths "
                    f"{self.widths} only (S-Net); got {width}."
                )
        return width

    def _channels_for_config(self, config):
        if not config:
            raise ValueError(
                "An empty configuration ({}) names no layer. Pass a width in "
                f"[{self.width_range[0]}, {self.width_range[1]}] or a dict "
                "layer name -> channels (layers it does not name keep their "
                "full channels)."
            )
        chosen = {}
        for name, channels in config.items():
            if name not in self._group_of_layer:
                known = sorted(self._group_of_layer)
                raise ValueError(
                    f"The channel configuration names '{name}', which is not "
                    "a slimmable layer of this model. Slimmable layers: "
                    f"{known[:20]}{' ...' if len(known) > 20 else ''}."
                )
            group = self._group_of_layer[name]
            full = self.full_channels[self.channel_groups.index(group)]
            if (
                isinstance(channels, bool)
                or not isinstance(channels, (int, np.integer))
                or not 1 <= channels <= full
            ):
                raise ValueError(
                    f"Layer '{name}' can have 1 to {full} channels; the "
                    f"configuration asks for {channels!r}."
                )
            if group in chosen and chosen[group][1] != channels:
                raise ValueError(
                    f"Layers '{chosen[group][0]}' and '{name}' are tied (their "
                    "outputs are added), so they need the same channel count; "
                    f"got {chosen[group][1]} and {channels}."
                )
            chosen[group] = (name, int(channels))
        return self.channel_plan.counts_for_groups(
            {group: count for group, (_, count) in chosen.items()}
        )

    def width_index(self, width):
        """Position of `width` in the S-Net width list (0 for US-Nets)."""
        if isinstance(width, dict) and self.widths and isinstance(
                self.widths[0], dict):
            counts = self.channels_for(width)
            for index, listed in enumerate(self.widths):
                if self.channels_for(listed) == counts:
                    return index
        if self.widths is None or isinstance(width, dict):
            return len(self.widths) - 1 if self.widths else 0
        width = self._validate_width(width)
        if width not in self.widths:  # an unlisted width of a shared-BN net
            return len(self.widths) - 1
        return self.widths.index(width)

    def calibration_key(self, width):
        """The key under which BN statistics of `width` are stored.

        Widths with identical channel counts share statistics.
        """
        counts = self.channels_for(width)
        text = ",".join(map(str, counts)) + f"|{self.width_index(width)}"
        return "k" + hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def width(self):
        """The width `set_width` last set (a number or a configuration)."""
        return self._current_width

    def set_width(self, width):
        """Sets the width used by `predict`, `evaluate`, `__call__`, export.

        Selects the BN statistics calibrated for that width (see
        `keras_slim.calibrate_bn`); warns if there are none and the network
        needs them.

        Args:
            width: A number in `width_range` (one of `widths` for S-Net) or a
                dict layer name -> channels.

        Example:

        >>> model.set_width(0.35)
        >>> probabilities = model.predict(images)
        """
        counts = self.channels_for(width)
        index = self.width_index(width)
        key = self.calibration_key(width)
        self._active_channels.assign(np.asarray(counts, "int32"))
        self._active_width_index.assign(index)
        calibrated = [layer.activate_calibration(key) for layer in self.bn_layers]
        self._current_width = width
        needs_calibration = (
            self.bn_layers
            and not all(calibrated)
            and not self.exact_without_calibration
            and counts != self.full_channels
            and (self.widths is None
                 or (not self.switchable and width not in self.widths))
        )
        if needs_calibration:
            warnings.warn(
                f"Width {width} has no calibrated BatchNormalization "
                "statistics; it uses the moving statistics of the full width, "
                "which are wrong for narrower widths. Call "
                "keras_slim.calibrate_bn(model, data, widths=[...]) first.",
                stacklevel=2,
            )

    def _state(self, width=None, width_index=None, **kwargs):
        """The `ActiveWidth` for a forward pass at `width`.

        `width` None uses the variables set by `set_width`; a tensor or a
        Python float is resolved in the graph; a list/tensor of counts is
        used as is (calibration).
        """
        if width is None:
            counts = self._active_channels
            width_index = self._active_width_index
        elif isinstance(width, (dict, float, int)):
            # Known in Python: static channel counts give static shapes (and
            # no slicing at all at full width).
            counts = self.channels_for(width)
            channels = dict(zip(self.channel_groups, counts))
            if width_index is None:
                width_index = self.width_index(width)
            return aw.ActiveWidth(channels, width_index, **kwargs)
        else:
            counts = self.channel_plan.counts_tensor(width)
        counts = tf.convert_to_tensor(counts)
        channels = {g: counts[i] for i, g in enumerate(self.channel_groups)}
        return aw.ActiveWidth(channels, width_index, **kwargs)

    def call(self, inputs, training=None, width=None):
        inputs = self._check_inputs(inputs)
        with aw.active_width(self._state(width)):
            return self.network(inputs, training=training)

    def _check_inputs(self, inputs):
        # A functional model silently adds a trailing axis to an input one
        # rank short ((2, 8, 8) for (None, 8, 8, 1)) and global pooling
        # accepts any image size; we refuse both. Keras retraces `predict`
        # with relaxed shapes after a second input shape (`reduce_retracing`),
        # so what is unknown at trace time (sizes, even the rank) is checked
        # when the graph runs, by `ensure_shape` ("Shape of tensor data
        # [8,28,28,3] is not compatible with expected shape [?,32,32,3]").
        expected = self.network.inputs
        flat = keras.tree.flatten(inputs)
        if len(flat) != len(expected):
            raise ValueError(
                f"Model '{self.name}' takes {len(expected)} input(s); got "
                f"{len(flat)}."
            )
        checked = []
        for tensor, spec in zip(flat, expected):
            want = tuple(spec.shape)
            shape = getattr(tensor, "shape", None)
            if shape is None:
                shape = np.shape(tensor)
            known = not isinstance(shape, tf.TensorShape) or (
                shape.rank is not None
            )
            if known and (len(shape) != len(want) or any(
                w is not None and s is not None and int(s) != int(w)
                for s, w in zip(tuple(shape)[1:], want[1:])
            )):
                raise ValueError(
                    f"Model '{self.name}' expects inputs of shape {want} "
                    f"(None = any size); got shape {tuple(shape)}."
                )
            if tf.is_tensor(tensor) and (
                tensor.shape.merge_with(want) != tensor.shape
            ):  # some of `want` is only checked at run time
                tensor = tf.ensure_shape(tensor, want)
            checked.append(tensor)
        return keras.tree.pack_sequence_as(inputs, checked)

    # -------------------------------------------------------------- training
    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        metrics=None,
        *,
        sandwich_size=4,
        inplace_distillation=True,
        per_replica_widths=False,
        width_seed=0,
        **kwargs,
    ):
        """Configures training; see `keras.Model.compile`.

        Args:
            optimizer, loss, metrics, **kwargs: As `keras.Model.compile`.
                The metrics are reported for the current width by
                `evaluate`, and per fixed width (`accuracy_w0.25`) by `fit`.
            sandwich_size: Widths per step for a universally slimmable
                network: max, min and `sandwich_size - 2` random widths.
            inplace_distillation: Narrower widths learn from the max width's
                predictions (stop-gradient) instead of the labels.
            per_replica_widths: Under `tf.distribute`, each replica draws its
                own random widths.
            width_seed: Seed of the random width stream.
        """
        if kwargs.get("jit_compile") is True:
            raise ValueError(
                "jit_compile=True is not supported: XLA rejects convolutions "
                "whose channel count changes at run time. Leave "
                "jit_compile='auto' (XLA stays off for this model)."
            )
        kwargs.setdefault("jit_compile", False)
        if self.widths is None and int(sandwich_size) < 2:
            raise ValueError(
                "sandwich_size must be >= 2 (max and min width); got "
                f"{sandwich_size}."
            )
        random_widths = self.widths is None and int(sandwich_size) > 2
        if per_replica_widths and random_widths and any(
            layer.synchronized for layer in self.bn_layers
        ):
            raise ValueError(
                "per_replica_widths=True cannot be combined with synchronized "
                "BatchNormalization: with per-replica random widths the "
                "replicas' BN layers have different channel counts, so there "
                "are no common batch statistics to synchronize. Turn one of "
                "them off."
            )
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        if loss is not None:
            losses_lib.warn_if_loss_mismatches(loss, self.output_kind, self.name)
        self.sandwich_size = int(sandwich_size)
        self.inplace_distillation = bool(inplace_distillation)
        self.per_replica_widths = bool(per_replica_widths)
        self.width_seed = int(width_seed)
        self._compile_config.config.update(
            sandwich_size=self.sandwich_size,
            inplace_distillation=self.inplace_distillation,
            per_replica_widths=self.per_replica_widths,
            width_seed=self.width_seed,
        )
        specs = list(metrics or [])
        if isinstance(metrics, dict):
            raise ValueError("Per-output metric dicts are not supported.")
        self._width_metrics = {}
        for width in self.reported_widths:
            tag = width_lib.width_tag(width)
            self._width_metrics[tag] = [keras.metrics.Mean(name=f"loss_{tag}")]
            self._width_metrics[tag] += [
                _metric_for_width(spec, tag) for spec in specs
            ]

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Outside a strategy scope, Keras (TF backend) defers building the
        # optimizer and compiled metrics to the first trace of the train
        # function; variables created there make tf.function trace it a
        # second time. A multi-width step holds several forward and backward
        # passes, so that second trace would double the first-epoch
        # overhead: build up front from the data's spec (no batch is read,
        # so the first epoch sees the dataset's first shuffle order).
        if self._distribute_strategy is None and data_batch is None:
            dataset = getattr(iterator, "_distributed_dataset", None)
            if isinstance(dataset, tf.data.Dataset):
                data_batch = dataset.element_spec
        if self._distribute_strategy is None and data_batch is not None:
            return self._symbolic_build(data_batch=data_batch)
        return super()._maybe_symbolic_build(iterator, data_batch)

    @property
    def output_kind(self):
        """`"logits"`, `"probabilities"` or None: what the network outputs.

        See `keras_slim.training.losses.output_kind`; `compile` warns when
        the loss expects the other one.
        """
        if not hasattr(self, "_output_kind"):
            self._output_kind = losses_lib.output_kind(self.network)
        return self._output_kind

    @property
    def reported_widths(self):
        """Widths whose loss and metrics `fit` logs individually."""
        if self.widths is not None:
            return self._widest_first()
        return [self.width_range[1], self.width_range[0]]

    def _widest_first(self):
        # Numbers sort; configurations are already ordered by size.
        if isinstance(self.widths[0], dict):
            return list(reversed(self.widths))
        return sorted(self.widths, reverse=True)

    @property
    def metrics(self):
        extra = [m for group in self._width_metrics.values() for m in group]
        return super().metrics + extra

    def training_widths(self):
        """The widths trained in one step, widest first (traced per step)."""
        if self.widths is not None:
            return self._widest_first()
        return steps.sandwich_widths(
            self.width_range,
            self.sandwich_size,
            self.optimizer.iterations,
            seed=self.width_seed,
            per_replica=self.per_replica_widths,
        )

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        widths = self.training_widths()

        def forward(width, is_widest):
            # S-Net trains private BN rows: every width updates its own
            # moving statistics. Shared BN keeps those of the widest pass.
            state = self._state(
                width,
                width_index=(
                    self.widths.index(width) if self.widths else None
                ),
                update_moving_stats=is_widest or self.widths is not None,
            )
            with aw.active_width(state):
                return self.network(x, training=True)

        def hard_loss(y_pred, is_widest):
            if is_widest:
                return self.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                    training=True,
                )
            # The other widths add only the compiled loss: `compute_loss`
            # would add the regularisation losses again for every width.
            # Keras has no public accessor for the compiled loss alone.
            return self._compile_loss(y, y_pred, sample_weight)

        with tf.GradientTape() as tape:
            losses, predictions = steps.multi_width_losses(
                forward,
                widths,
                hard_loss,
                inplace_distillation=self.inplace_distillation,
                from_logits=self.outputs_logits,
                sample_weight=sample_weight,
            )
            total_loss = tf.add_n(losses)
            scaled_loss = self.optimizer.scale_loss(total_loss)
        gradients = tape.gradient(scaled_loss, self.trainable_weights)
        # Kernels read through tf.gather (inputs assembled by Flatten or
        # Concatenate) get IndexedSlices gradients whose row count follows
        # the random widths. Collective all-reduces fix an instance's shape
        # at its first run, so inside a multi-step loop (fit's
        # steps_per_execution > 1, the trainers' loop) the next step fails
        # with "Shape mismatch in the collective instance". Dense gradients
        # always have the variable's shape.
        gradients = [
            tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
            for g in gradients
        ]
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))

        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        unscale = steps.unscale_for_distribution
        self._loss_tracker.update_state(
            unscale(total_loss), sample_weight=batch_size
        )
        for width, loss, y_pred in zip(widths, losses, predictions):
            if tf.is_tensor(width):
                continue  # random sandwich widths are not logged one by one
            loss_metric, *metrics = self._width_metrics[
                width_lib.width_tag(width)
            ]
            loss_metric.update_state(unscale(loss), sample_weight=batch_size)
            for metric in metrics:
                metric.update_state(y, y_pred, sample_weight=sample_weight)
        # The compiled metrics (e.g. "accuracy") follow the widest width.
        return self.compute_metrics(
            x, y, predictions[0], sample_weight=sample_weight
        )

    def test_step(self, data):
        # Evaluation runs at the width set by set_width: only the compiled
        # metrics apply, not the per-width training ones.
        logs = super().test_step(data)
        per_width = {m.name for g in self._width_metrics.values() for m in g}
        return {k: v for k, v in logs.items() if k not in per_width}

    # ----------------------------------------------------------------- config
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "network": keras.saving.serialize_keras_object(self.network),
            "width_range": list(self.width_range),
            "widths": self.widths,
            "divisor": self.divisor,
            "min_channels": self.min_channels,
            "outputs_logits": self.outputs_logits,
            "base_channels": self.base_channels,
            "derived_groups": self.derived_groups,
            "group_divisors": self.group_divisors,
            "slim_options": self.slim_options,
            "calibrations": self.calibrations,
            "width": self._current_width,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(
            config.pop("network"), custom_objects=custom_objects
        )
        return cls(network, **config)

