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
from keras_slim.training.metrics import make_metric


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
        if getattr(config, "searched", False):
            # A search result names every slimmable layer of the model it
            # was searched on: fewer here means another model.
            missing = [n for n in self._group_of_layer if n not in config]
            if missing:
                warnings.warn(
                    f"Configuration '{config.name}' does not name "
                    f"{len(missing)} of this model's "
                    f"{len(self._group_of_layer)} slimmable layers (e.g. "
                    f"{missing[:3]}), which keep their full channels: was it "
                    "searched on another model? Its MACs here differ from "
                    "the search's.", stacklevel=3)
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
            optimizer, **kwargs: As `keras.Model.compile`.
            loss: ONE loss for the network's output(s) (a name, a
                `keras.losses.Loss` or a function). `compile` warns when it
                reads probabilities and the network outputs logits, or the
                reverse.
            metrics: A list of metrics, computed on the widest width's
                output(s) during `fit` (and per fixed width, as
                `accuracy_w0.25`) and at the width set by `set_width`
                during `evaluate`.
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
        for option in ("loss_weights", "weighted_metrics"):
            if kwargs.get(option) is not None:
                raise ValueError(
                    f"`{option}` is not supported by {type(self).__name__}: "
                    "one loss applies to every output; pass sample weights "
                    "to fit instead."
                )
        if isinstance(metrics, dict):
            raise ValueError(
                "Pass a list of metrics: they are computed for every output "
                "(and every logged width)."
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
        objective = self.make_objective(loss)
        # Keras compiles the optimizer and run settings; the loss and the
        # metrics are the multi-width step's own (see `get_compile_config`).
        super().compile(optimizer=optimizer, loss=None, metrics=None, **kwargs)
        self._objective = objective
        self.sandwich_size = int(sandwich_size)
        self.inplace_distillation = bool(inplace_distillation)
        self.per_replica_widths = bool(per_replica_widths)
        self.width_seed = int(width_seed)
        self._compile_args = {
            "loss": loss,
            "metrics": metrics,
            "sandwich_size": self.sandwich_size,
            "inplace_distillation": self.inplace_distillation,
            "per_replica_widths": self.per_replica_widths,
            "width_seed": self.width_seed,
        }
        self._build_metrics(list(metrics or []))
        # Built now, not in the first trace of the train function, where its
        # variables would make tf.function trace the multi-width step twice
        # (and where a replica could not create them).
        self.optimizer.build(self.trainable_variables)

    def make_objective(self, loss):
        """The per-output objective of the multi-width step for `loss`.

        A `keras_slim.training.LabelObjective` (warning if `loss` reads
        probabilities where the network outputs logits, or the reverse);
        `EarlyExitModel` trains its exits as boosted ensembles instead.
        Returns None for `loss=None` (training then raises).
        """
        if loss is None:
            return None
        losses_lib.warn_if_loss_mismatches(loss, self.output_kind, self.name)
        return steps.LabelObjective(
            losses_lib.resolve_loss(loss), from_logits=self.outputs_logits)

    def _build_metrics(self, specs):
        """The loss tracker, metrics per output and per logged width."""
        self._loss_metric = keras.metrics.Mean(name="loss")
        self._output_metrics = []
        for name in self._objective_output_names():
            loss_metric = (
                None if name is None else keras.metrics.Mean(f"loss_{name}"))
            self._output_metrics.append(
                (loss_metric, [make_metric(spec, name) for spec in specs]))
        self._width_metrics = {}
        for width in self.reported_widths:
            tag = width_lib.width_tag(width)
            if tag in self._width_metrics:
                raise ValueError(
                    f"Two logged widths share the metric tag '{tag}'; "
                    f"widths {self.reported_widths} must differ by more "
                    "than 1e-6."
                )
            self._width_metrics[tag] = [keras.metrics.Mean(f"loss_{tag}")]
            self._width_metrics[tag] += [
                make_metric(spec, tag) for spec in specs]

    def _objective_output_names(self):
        if getattr(self, "_objective", None) is not None:
            return self._objective.output_names
        return (None,) * len(self.network.outputs)

    def get_compile_config(self):
        """Keras' compile config plus the multi-width step's arguments."""
        config = super().get_compile_config()
        if config and getattr(self, "_compile_args", None) is not None:
            config = dict(config)
            config.update(
                keras.saving.serialize_keras_object(self._compile_args))
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)

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
        # Exactly the metrics the multi-width step updates, each once (Keras
        # would also list metric attributes it tracks on its own).
        if getattr(self, "_loss_metric", None) is None:
            return []
        metrics = [self._loss_metric]
        for loss_metric, output_metrics in self._output_metrics:
            metrics += [loss_metric] if loss_metric is not None else []
            metrics += output_metrics
        return metrics + [m for g in self._width_metrics.values() for m in g]

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

    def forward(self, x, width=None, training=False, update_moving_stats=True):
        """The network's outputs at `width`, as a list.

        Args:
            x: Inputs.
            width: A width or configuration (Python value or scalar tensor);
                None uses the one `set_width` set.
            training: Training mode (batch statistics in BN).
            update_moving_stats: Whether BN in training mode updates its
                moving statistics in this pass.
        """
        index = None
        if self.widths is not None and width is not None and not (
            tf.is_tensor(width)
        ):
            index = self.width_index(width)
        state = self._state(width, width_index=index,
                            update_moving_stats=update_moving_stats)
        with aw.active_width(state):
            outputs = self.network(x, training=training)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [
            outputs]

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_compiled("training")
        widths = self.training_widths()

        def forward(width, is_widest):
            # S-Net trains private BN rows: every width updates its own
            # moving statistics. Shared BN keeps those of the widest pass.
            return self.forward(
                x, width, training=True,
                update_moving_stats=is_widest or self.widths is not None)

        total_loss, per_width = steps.multi_width_step(
            forward,
            widths,
            self._objective,
            self.optimizer,
            self.trainable_weights,
            y,
            sample_weight=sample_weight,
            inplace_distillation=self.inplace_distillation,
            regularization=lambda: steps.regularization_loss(self),
        )
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        self._record_outputs(total_loss, *per_width[0], y, sample_weight,
                             batch_size)
        unscale = steps.unscale_for_distribution
        for width, (losses, predictions) in zip(widths, per_width):
            if tf.is_tensor(width):
                continue  # random sandwich widths are not logged one by one
            slot = self._width_metrics.get(width_lib.width_tag(width))
            if slot is None:
                continue
            loss_metric, *metrics = slot
            loss_metric.update_state(
                unscale(tf.add_n(losses)), sample_weight=batch_size)
            for metric in metrics:
                metric.update_state(y, predictions[-1],
                                    sample_weight=sample_weight)
        return self._logs(include_widths=True)

    def test_step(self, data):
        # Evaluation runs at the width set by set_width: the loss and the
        # per-output metrics, not the per-width training ones.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_compiled("evaluation")
        x = self._check_inputs(x)
        losses, predictions = self._objective(
            self.forward(x, training=False), y, sample_weight)
        total_loss = tf.add_n(losses)
        extra = steps.regularization_loss(self)
        if extra is not None:
            total_loss = total_loss + extra
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        self._record_outputs(total_loss, losses, predictions, y,
                             sample_weight, batch_size)
        return self._logs(include_widths=False)

    def _check_compiled(self, what):
        if getattr(self, "_objective", None) is None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' needs a loss for "
                f"{what}: compile it with one, e.g. model.compile(optimizer, "
                "keras.losses.SparseCategoricalCrossentropy(from_logits=True))."
            )

    def _record_outputs(self, total_loss, losses, predictions, y,
                        sample_weight, batch_size):
        unscale = steps.unscale_for_distribution
        self._loss_metric.update_state(
            unscale(total_loss), sample_weight=batch_size)
        for (loss_metric, metrics), loss, prediction in zip(
            self._output_metrics, losses, predictions
        ):
            if loss_metric is not None:
                loss_metric.update_state(unscale(loss),
                                         sample_weight=batch_size)
            for metric in metrics:
                metric.update_state(y, prediction,
                                    sample_weight=sample_weight)

    def _logs(self, include_widths):
        metrics = self.metrics
        if not include_widths:
            skip = {id(m) for g in self._width_metrics.values() for m in g}
            metrics = [m for m in metrics if id(m) not in skip]
        logs = {}
        for metric in metrics:
            result = metric.result()
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
        return logs

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

