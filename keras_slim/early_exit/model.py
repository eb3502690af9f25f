"""`EarlyExitModel`: a network with several exits, trained with `model.fit`."""

import dataclasses

import keras
import numpy as np

from keras_slim import graph as graph_lib
from keras_slim.early_exit import budget as budget_lib
from keras_slim.early_exit.graph import ExitStructure
from keras_slim.layers.convolution import SlimKernelMixin
from keras_slim.model import SlimmableModel
from keras_slim.training import boosting
from keras_slim.training import losses as losses_lib

_CROSSENTROPY = {
    "sparse_categorical_crossentropy":
        keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
}


def _exit_loss(loss):
    """The per-exit loss object: a `keras.losses.Loss` on logits."""
    if loss is None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if isinstance(loss, str) and loss.lower() in _CROSSENTROPY:
        # Exits output logits (ensembles of logits are not probabilities).
        return _CROSSENTROPY[loss.lower()](from_logits=True)
    if isinstance(loss, keras.losses.Loss) and (
        loss.get_config().get("from_logits") is False
    ):
        raise ValueError(
            "The exits of an EarlyExitModel output logits; pass the loss "
            f"with from_logits=True (got {type(loss).__name__} with "
            "from_logits=False)."
        )
    return losses_lib.resolve_loss(loss)


@dataclasses.dataclass
class DynamicPrediction:
    """What `EarlyExitModel.predict_dynamic` returns.

    Attributes:
        labels: Predicted class per sample (int array).
        exits: The exit each sample left at, 1-based (`1..num_exits`).
        macs: Multiply-accumulates each sample cost: the cumulative MACs of
            its exit (every block and every head up to it).
        confidences: Max softmax of the ensemble at the exit taken.
        width: The width the network ran at.

    Example:

    >>> result = model.predict_dynamic(x_test, policy)
    >>> result.labels[:4], result.exits[:4]
    (array([3, 8, 8, 0]), array([1, 3, 1, 2]))
    >>> result.mean_macs, np.mean(result.labels == y_test)
    """

    labels: np.ndarray
    exits: np.ndarray
    macs: np.ndarray
    confidences: np.ndarray
    width: object

    @property
    def mean_macs(self):
        """Average MACs per sample."""
        return float(np.mean(self.macs)) if len(self.macs) else 0.0


@keras.saving.register_keras_serializable(package="keras_slim")
class EarlyExitModel(SlimmableModel):
    """A network with several exits whose ensembles boost each other.

    Wraps a functional network with one output per exit: the raw logits
    `f_1..f_N` of each exit head, in exit order (usually built by
    `keras_slim.add_exits` or the zoo's `keras_slim.models.resnet_exits`).
    Calling the model returns the ensemble logits of every exit, a list in
    exit order: `P_1 = f_1`, `P_n = f_n + t_n * P_{n-1}` (BoostNet; `t = 0`
    gives every exit its own `f_n`, as in MSDNet).

    - `fit` trains every exit in one step: exit n on
      `CE(f_n + stop_gradient(t_n * P_{n-1}), y)` (whose value is
      `CE(P_n, y)`), the per-exit losses summed. Per-exit losses and
      metrics are logged as `loss_exit1`, `accuracy_exit3`, ...
    - `evaluate` reports the same per-exit figures for the ensembles.
    - `exits` describes every exit, with its cumulative MACs (every block
      and every head up to it: what a sample that leaves there has paid).
    - `predict_dynamic(x, thresholds)` runs budgeted inference: each sample
      leaves at the first exit whose confidence (max softmax of `P_n`)
      reaches that exit's threshold (see
      `keras_slim.calibrate_exit_thresholds`).
    - Width and depth together: an `EarlyExitModel` is a `SlimmableModel`.
      When its network has slim layers, `set_width` applies to backbone and
      heads, `calibrate_bn` and `strip` work as for any slimmable network,
      and `fit` trains every sandwich width's exits in each step. Without
      slim layers it is an ordinary (width 1.0) early-exit network.

    Args:
        network: A built functional `keras.Model`, one input, `N >= 2`
            outputs (raw exit logits, same number of classes each).
        after: The `N - 1` layer names after which the early exits branch
            off. Every path from the input must pass through each of them
            (this is what lets staged inference hand on one tensor).
        ensemble_weight: `t`: one number (default 0.5), a `(start, end)`
            pair spaced linearly over the exits, or one value per exit
            (`t_1` has no effect). Exit n uses `t_n` in training and in
            inference alike. 0 means plain joint training.
        width_range, widths, divisor, min_channels, base_channels,
            calibrations: As `SlimmableModel`. With neither `width_range`
            nor `widths`, a network without slim layers gets `widths=[1.0]`
            (one width) and one with slim layers `width_range=(0.25, 1.0)`.
        outputs_logits: Must be True (the exits output logits).
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Example:

    >>> model = keras_slim.add_exits(backbone, after=["block2", "block4"])
    >>> model.compile("adam", metrics=["accuracy"])
    >>> history = model.fit(train_ds, epochs=10)
    >>> history.history["accuracy_exit1"]
    >>> policy = keras_slim.calibrate_exit_thresholds(
    ...     model, (x_val, y_val), budget=0.6 * model.exits[-1]["macs"])
    >>> result = model.predict_dynamic(x_test, policy)

    Reference:
        Yu et al., Boosted Dynamic Neural Networks, AAAI 2023
        (https://arxiv.org/abs/2211.16726); Huang et al., Multi-Scale Dense
        Networks for Resource Efficient Image Classification, ICLR 2018
        (https://arxiv.org/abs/1703.09844).
    """

    def __init__(
        self,
        network,
        after,
        ensemble_weight=0.5,
        width_range=None,
        widths=None,
        divisor=1,
        min_channels=None,
        outputs_logits=True,
        base_channels=None,
        calibrations=None,
        **kwargs,
    ):
        if not isinstance(network, keras.Model) or not network.built:
            raise ValueError(
                "`network` must be a built functional keras.Model with one "
                f"output per exit; got {network!r}."
            )
        if len(getattr(network, "outputs", None) or []) < 2:
            raise ValueError(
                "An EarlyExitModel needs a network with at least 2 outputs "
                "(one per exit); this one has "
                f"{len(getattr(network, 'outputs', None) or [])}. Use "
                "keras_slim.add_exits(backbone, after=[layer names]) to add "
                "exits to a backbone."
            )
        if not outputs_logits:
            raise ValueError(
                "The exits of an EarlyExitModel must output logits (the "
                "ensemble adds logits); remove the final softmax."
            )
        classes = {int(t.shape[-1]) for t in network.outputs}
        if len(classes) != 1 or any(len(t.shape) != 2 for t in network.outputs):
            raise ValueError(
                "Every exit must output logits of shape (batch, classes) "
                "with the same number of classes; got output shapes "
                f"{[tuple(t.shape) for t in network.outputs]}."
            )
        if isinstance(after, str):
            after = [after]
        structure = ExitStructure(network, after)  # validates `after`
        if width_range is None and widths is None:
            slimmable = any(
                isinstance(layer, SlimKernelMixin) and layer.slim_out
                for layer in graph_lib.all_layers(network)
            )
            if slimmable:
                width_range = (0.25, 1.0)
            else:
                widths = [1.0]
        range_kwargs = {} if width_range is None else {
            "width_range": width_range
        }
        super().__init__(
            network,
            widths=widths,
            divisor=divisor,
            min_channels=min_channels,
            outputs_logits=True,
            base_channels=base_channels,
            calibrations=calibrations,
            **range_kwargs,
            **kwargs,
        )
        self._structure = structure
        self.after = list(after)
        self.ensemble_weights = boosting.resolve_ensemble_weights(
            ensemble_weight, structure.num_exits
        )
        self.num_classes = classes.pop()
        self._costs = {}

    # ----------------------------------------------------------------- exits
    @property
    def num_exits(self):
        """Number of exits `N`."""
        return self._structure.num_exits

    @property
    def boosted(self):
        """Whether exits ensemble their predecessors (`t_n > 0` for some n)."""
        return any(w > 0 for w in self.ensemble_weights[1:])

    def exit_costs(self, width=None):
        """MACs per stage and per exit (cumulative) at a width.

        The cost of exit k is that of every layer a sample leaving there has
        run: the backbone up to the k-th cut and heads 1..k (a sample checks
        every exit on its way). Counted by `keras_slim.profile` on the
        stripped network of that width.

        Args:
            width: A width (default: the current one).

        Returns:
            A dict with "stage_macs" (per stage) and "macs" (cumulative per
            exit), lists of ints.
        """
        from keras_slim.profiling import profile
        from keras_slim.stripping import strip

        width = self.width if width is None else width
        key = (tuple(self.channels_for(width)), self.width_index(width))
        if key not in self._costs:
            stripped = strip(self, width)
            macs = {}
            for row in profile(stripped)["layers"]:
                macs[row["name"]] = macs.get(row["name"], 0) + row["macs"]
            stages = ExitStructure(stripped, self.after).stage_layers
            stage_macs = [int(sum(macs.get(n, 0) for n in s)) for s in stages]
            self._costs[key] = {
                "stage_macs": stage_macs,
                "macs": [int(v) for v in np.cumsum(stage_macs)],
            }
        return {k: list(v) for k, v in self._costs[key].items()}

    @property
    def exits(self):
        """One dict per exit, at the current width.

        Keys: "index" (1-based), "name" ("exit1", ...), "after" (the layer
        the exit branches off after; None for the last exit), "output" (the
        layer producing its raw logits), "ensemble_weight" (`t_n`),
        "stage_macs" and "macs" (cumulative, heads 1..k included).
        """
        costs = self.exit_costs()
        outputs = self._structure.output_layer_names()
        return [
            {
                "index": k + 1,
                "name": f"exit{k + 1}",
                "after": self.after[k] if k < len(self.after) else None,
                "output": outputs[k],
                "ensemble_weight": self.ensemble_weights[k],
                "stage_macs": costs["stage_macs"][k],
                "macs": costs["macs"][k],
            }
            for k in range(self.num_exits)
        ]

    # -------------------------------------------------------------- forward
    def raw_exit_logits(self, inputs, training=False, width=None):
        """The raw logits `f_1..f_N` of every exit head (no ensemble)."""
        return list(super().call(inputs, training=training, width=width))

    def call(self, inputs, training=None, width=None):
        raw = super().call(inputs, training=training, width=width)
        return boosting.ensemble_logits(list(raw), self.ensemble_weights)

    def predict_dynamic(self, x, thresholds, width=None, batch_size=256):
        """Budgeted inference: each sample leaves at its first confident exit.

        Sample i leaves at the first exit k whose confidence (max softmax of
        `P_k`) is `>= thresholds[k]`; the last exit takes every sample left.
        This computes every exit of the batch and then selects (the result
        is what an early-stopping runtime returns; `run_cascade` is that
        runtime for the exported stages).

        Args:
            x: Inputs (numpy array or dataset of inputs / (inputs, labels)).
            thresholds: An `ExitPolicy` from `calibrate_exit_thresholds`
                (its width is used), or `num_exits - 1` numbers.
            width: Width to run at (default: the policy's, else the
                current width). The model's width is restored afterwards.
            batch_size: Batch size of the forward passes.

        Returns:
            A `DynamicPrediction` (labels, 1-based exits, MACs per sample).

        Raises:
            ValueError: for a thresholds list of the wrong length or with
                non-numbers.

        Example:

        >>> result = model.predict_dynamic(x_test, policy)
        >>> result.mean_macs, np.bincount(result.exits)
        """
        values, policy_width = budget_lib.check_thresholds(
            thresholds, self.num_exits
        )
        width = width if width is not None else policy_width
        with budget_lib.at_width(self, width):
            cache = budget_lib.exit_logits(self, x, batch_size=batch_size)
        exits = budget_lib.assign_exits(cache.confidences, values)
        index = np.arange(exits.size)
        return DynamicPrediction(
            labels=cache.predictions[exits, index],
            exits=exits + 1,
            macs=np.asarray(cache.cumulative_macs)[exits],
            confidences=cache.confidences[exits, index],
            width=cache.width,
        )

    # ------------------------------------------------------------- training
    def make_objective(self, loss):
        """Boosted exits: `keras_slim.training.BoostedExitsObjective`.

        ONE loss on logits applies to every exit (default: sparse
        categorical cross-entropy from logits; the names
        "sparse_categorical_crossentropy" and "categorical_crossentropy"
        are taken with `from_logits=True`). Metrics are computed per exit on
        its ensemble logits and logged as `<name>_exit<k>`; distillation of
        a narrower width is per exit, from the widest width's detached
        `P_n`.
        """
        return boosting.BoostedExitsObjective(
            _exit_loss(loss), self.ensemble_weights)

    # --------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config.update(
            after=list(self.after),
            ensemble_weight=list(self.ensemble_weights),
        )
        return config
