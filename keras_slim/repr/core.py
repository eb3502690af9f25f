"""Taking filters out of a network and bringing them back: RePr's state.

`RePrController` is the one implementation of RePr's training-time
behaviour; `RePrCallback` (plain `model.fit`) and the trainers' custom loop
(`--method=repr`) both drive it. It owns, per ranked convolution, a
`FilterUnit`: the conv layer, the BatchNormalization that directly follows
it (if any) and the state RePr adds, all in `tf.Variable`s that a
`tf.train.Checkpoint` holds (`controller.state`), so a resumed run resumes
the schedule and the masks exactly.

How a dropped filter is kept truly out during S2 (the sub-network phase):

- At the drop, its kernel column and bias are set to zero, and so is the
  scale (gamma) of the BN channel after it. With `bn_mode="paper"` the BN
  offset (beta) is zeroed too and the channel outputs exactly zero; with
  `bn_mode="preserve"` (the default) beta keeps its value and the channel
  outputs it, a constant equal to the channel's mean output (in training
  mode BN output has mean beta): the dropped filter carries no signal and
  gets no gradient either way, but the layers after it keep seeing the
  mean they were trained on (the next BN absorbs a constant in training
  mode; in inference mode its statistics stay closer to right). Without a
  BN after the conv the output is zero in both modes.
- After every optimizer step the same values are written back, inside the
  traced train step (`hold`): whatever the gradient, momentum, Adam moments
  or weight decay did to them this step is undone, and the BN moving mean
  and variance of those channels are restored to their values at the drop,
  so they do not drift towards the statistics of a zero channel.
- The optimizer's own slots for those weights are left to evolve during S2
  (they touch nothing that is not written back) and are zeroed at the
  re-initialisation, so the new filters start without momentum.

At re-initialisation (see `reinit.py`) the kernel columns get orthogonal
directions and the optimizer slots of those entries zero. With
`bn_mode="paper"` the new filters are as long as a freshly initialised
filter and their bias and every BN parameter and statistic get the
initializers' values (gamma 1, beta 0, statistics 0 / 1). With
`bn_mode="preserve"` a filter followed by a BN enters at its layer's
scale: as long as the median kept filter, its BN gamma the median |gamma|
of the kept channels, beta kept, a moving variance estimated from the kept
filters (see `FilterUnit._enter_like_kept` for the measurements behind
it); a filter without a BN keeps the initializer's length.

After every event, `StatisticsRestart` (`reestimate_bn=True`) re-estimates
every BN's moving statistics from the steps that follow, so inference
follows the changed network after one step instead of after
`1 / (1 - momentum)` steps.

With `compensate_drop=True` (opt-in) and `calibration_data`, a drop
also refits the layer that reads each dropped filter's channel, so the
kept channels take over what they can predict of it (`compensate.py`);
the dropped filters themselves are held out exactly as above.

The next layer's input weights of a dropped filter are left alone, as in
the paper: during S2 they get no gradient from a zero input (a preserved
constant input acts like a bias and does move them), weight decay and
momentum still act on them as on any weight; at re-initialisation they
are kept, so the new filter starts with its predecessor's outgoing
weights.
"""

import numbers
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_slim import compat
from keras_slim import graph as graph_lib
from keras_slim.repr import compensate as compensate_lib
from keras_slim.repr import ranking as ranking_lib
from keras_slim.repr import reinit as reinit_lib
from keras_slim.repr import schedule as schedule_lib

_AVERAGE_SLOT_NAMES = ("moving_average",)  # EMA copies of the weights

BN_MODES = ("preserve", "paper")


def check_bn_mode(bn_mode):
    if bn_mode not in BN_MODES:
        raise ValueError(
            f"Unknown bn_mode {bn_mode!r}; expected 'preserve' (a dropped "
            "channel keeps its BN offset, a re-initialised one enters at "
            "its layer's scale) or 'paper' (both reset to zero / the "
            "initializers' values)."
        )
    return bn_mode


def to_numpy(value):
    """A variable's (or tensor's) value as a numpy array (a copy)."""
    return np.array(tf.convert_to_tensor(value).numpy())


def _is_variable(value):
    return isinstance(value, (keras.Variable, tf.Variable))


def graph_calls(model):
    """Every layer call of the functional graphs in `model`.

    A Sequential or functional model is traced whole with
    `keras_slim.graph.trace` (nested models expanded); a subclassed model
    (e.g. a `SlimmableModel`) through the Sequential and functional models
    among its layers. A model with no such graph gives an empty list.

    Example:

    >>> calls = graph_calls(model)
    >>> bn = following_batch_norm(model.get_layer("conv1"), calls)
    """
    if getattr(model, "inputs", None):  # Sequential (built) or functional
        return graph_lib.trace(model)[0]
    calls = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.Model):
            calls.extend(graph_calls(layer))
    return calls


def following_batch_norm(conv, calls):
    """The BatchNormalization that alone consumes `conv`'s output, or None.

    Found from the functional graph (`calls`, from `graph_calls`): one call
    reads `conv`'s output, it is a `keras.layers.BatchNormalization` (or
    subclass, e.g. a slim BN), and that layer is called only there.
    Counting calls in a fresh trace, not Keras' per-layer node lists, keeps
    the answer right after `profile()`, `strip()` or any other rebuild of
    the model has called its layers again.
    """
    outputs = {id(t) for c in calls if c.layer is conv for t in c.outputs}
    consumers = [
        c for c in calls for t in c.inputs if id(t) in outputs
    ]
    if len(consumers) != 1:
        return None
    layer = consumers[0].layer
    if not isinstance(layer, keras.layers.BatchNormalization):
        return None
    if sum(c.layer is layer for c in calls) != 1:
        return None
    return layer


def _activation_at_zero(activation):
    if activation is None:
        return 0.0
    value = activation(keras.ops.zeros((1,), "float32"))
    return float(keras.ops.convert_to_numpy(value)[0])


def why_not_maskable(conv, bn):
    """A reason why RePr cannot zero `conv`'s filters, or None."""
    kernel = getattr(conv, "kernel", None)
    if not _is_variable(kernel):
        return (
            "its kernel is computed, not a variable (LoRA or quantization "
            "enabled), so filters cannot be zeroed and held"
        )
    if not np.dtype(kernel.dtype).kind == "f":
        return f"its kernel has dtype {kernel.dtype}, not a float"
    if getattr(conv, "data_format", "channels_last") != "channels_last":
        return "it is channels_first; RePr masks channels_last convolutions"
    if bn is not None:
        ndim = conv.rank + 2
        axis = bn.axis if isinstance(bn.axis, int) else None
        if axis is None or axis % ndim != ndim - 1:
            return (
                f"the BatchNormalization '{bn.name}' after it normalises "
                f"axis {bn.axis}, not the channel axis"
            )
        if getattr(bn, "renorm", False):
            return (
                f"the BatchNormalization '{bn.name}' after it uses renorm, "
                "whose extra statistics RePr does not hold"
            )
        return None
    at_zero = _activation_at_zero(conv.activation)
    if at_zero != 0.0:
        return (
            f"its activation maps 0 to {at_zero:g} and no BatchNormalization "
            "follows, so a dropped filter's output cannot be zero"
        )
    return None


def _sample(initializer, shape, seed):
    """`initializer(shape)` as numpy, seeded when the initializer has one."""
    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    if "seed" in config:
        initializer = type(initializer).from_config({**config, "seed": seed})
    return np.asarray(
        keras.ops.convert_to_numpy(initializer(tuple(shape), "float32")),
        "float64",
    )


class FilterUnit:
    """One ranked convolution, the BN after it, and RePr's state for it.

    Args:
        conv: A built conv layer (see `ranking.conv_layers`).
        bn: The BatchNormalization directly after it, or None.
        index: Position among the ranked layers (seeds the re-init).
        bn_mode: "preserve" or "paper": what a drop and a re-init do to
            the BN channel after a filter (see the module doc).

    Raises:
        ValueError: if the layer's filters cannot be masked (says why).
    """

    def __init__(self, conv, bn, index, bn_mode="preserve"):
        reason = why_not_maskable(conv, bn)
        if reason:
            raise ValueError(
                f"Layer '{conv.name}': RePr cannot drop its filters: "
                f"{reason}. Pass `layers=[...]` without it."
            )
        self.conv = conv
        self.bn = bn
        self.index = int(index)
        self.bn_mode = check_bn_mode(bn_mode)
        self.name = conv.name
        self.kernel = conv.kernel
        self.filters = int(self.kernel.shape[-1])
        self.bias = conv.bias if getattr(conv, "use_bias", False) else None
        self.gamma = self.beta = None
        self.moving_mean = self.moving_variance = None
        if bn is not None:
            self.gamma = bn.gamma if bn.scale else None
            self.beta = bn.beta if bn.center else None
            self.moving_mean = bn.moving_mean
            self.moving_variance = bn.moving_variance
        safe = self.name.replace("/", "_")

        def variable(value, name):
            # Written between steps (cross-replica), only read in steps.
            return tf.Variable(
                value,
                trainable=False,
                name=f"repr_{name}_{safe}",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

        # 1.0 for a filter in the network, 0.0 for a dropped one.
        self.mask = variable(np.ones(self.filters, "float32"), "mask")
        # The kernel at the drop: re-initialised filters avoid it.
        self.previous_kernel = variable(
            np.zeros(self.kernel.shape, "float32"), "previous_kernel"
        )
        self.held_mean = self.held_variance = self.held_offset = None
        if bn is not None:
            self.held_mean = variable(
                np.zeros(self.moving_mean.shape, "float32"), "held_mean"
            )
            self.held_variance = variable(
                np.ones(self.moving_variance.shape, "float32"),
                "held_variance",
            )
            if self.beta is not None and self.bn_mode == "preserve":
                # The BN offset of a dropped channel, held at its value at
                # the drop: the channel outputs its mean during S2.
                self.held_offset = variable(
                    np.zeros(self.beta.shape, "float32"), "held_offset"
                )

    @property
    def parameters(self):
        """The trainable variables whose filter entries RePr controls."""
        return [
            v for v in (self.kernel, self.bias, self.gamma, self.beta)
            if v is not None
        ]

    @property
    def zeroed(self):
        """The variables whose dropped entries are held at zero (all of
        `parameters` but a held BN offset)."""
        return [v for v in self.parameters
                if not (v is self.beta and self.held_offset is not None)]

    def dropped(self):
        """Indices of the filters currently out (numpy int array)."""
        return np.flatnonzero(np.asarray(self.mask.numpy()) == 0.0)

    # -------------------------------------------------------------- S2
    def hold(self):
        """Writes the dropped entries back (graph or eager; see module doc)."""
        keep = tf.convert_to_tensor(self.mask)
        for variable in self.zeroed:
            value = tf.convert_to_tensor(variable)
            variable.assign(value * tf.cast(keep, value.dtype))
        if self.bn is not None:
            kept = keep > 0.0
            pairs = [(self.moving_mean, self.held_mean),
                     (self.moving_variance, self.held_variance)]
            if self.held_offset is not None:
                pairs.append((self.beta, self.held_offset))
            for variable, held in pairs:
                value = tf.convert_to_tensor(variable)
                variable.assign(tf.where(kept, value, tf.cast(held, value.dtype)))

    def drop(self, indices):
        """Takes filters `indices` out (eager, between steps)."""
        indices = np.asarray(indices, "int64")
        mask = np.ones(self.filters, "float32")
        mask[indices] = 0.0
        self.mask.assign(mask)
        self.previous_kernel.assign(to_numpy(self.kernel))
        if self.bn is not None:
            mean = to_numpy(self.moving_mean)
            if self.gamma is None:
                # Without a scale, inference computes (0 - mean) / std +
                # beta: a zero mean keeps the output at zero.
                mean[..., indices] = 0.0
            self.held_mean.assign(mean.astype("float32"))
            self.held_variance.assign(
                to_numpy(self.moving_variance)
            )
            if self.held_offset is not None:
                self.held_offset.assign(to_numpy(self.beta))
        self.hold()

    # ---------------------------------------------------------- re-init
    def reinitialize(self, seed_sequence, avoid_previous=True):
        """Brings the dropped filters back, re-initialised (eager).

        Args:
            seed_sequence: A `numpy.random.SeedSequence` (deterministic
                per cycle and layer, so a resumed run draws the same).
            avoid_previous: Also keep the new filters orthogonal to their
                own values at the drop, when the null space has room.

        Returns:
            `(indices, directions, mode)` with the `reinit` mode, or None
            when nothing was dropped.
        """
        dropped = self.dropped()
        if not dropped.size:
            return None
        rng = np.random.default_rng(seed_sequence)
        kernel = to_numpy(self.kernel).astype("float64")
        shape = kernel.shape
        flat = kernel.reshape(-1, self.filters)
        kept = flat[:, self.mask.numpy() > 0].T
        previous = None
        if avoid_previous:
            previous = np.asarray(self.previous_kernel.numpy(), "float64")
            previous = previous.reshape(-1, self.filters)[:, dropped].T
        with ranking_lib.single_threaded_blas():
            directions, mode = reinit_lib.orthogonal_directions(
                kept, len(dropped), previous=previous, rng=rng
            )
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=6)]
        fresh = _sample(self.conv.kernel_initializer, shape, seeds[0])
        norms = np.linalg.norm(fresh.reshape(-1, self.filters), axis=0)
        norms = norms[dropped]
        kept_norms = np.linalg.norm(kept, axis=1)
        if (self.bn_mode == "preserve" and self.bn is not None
                and kept.size and np.median(kept_norms) > 0):
            # Before a BN, at the length of the layer's kept filters, not
            # of a fresh initialisation: weight decay has moved them far
            # from it, and under BN a filter's length only sets its
            # effective learning rate (lr / |w|^2), which should match its
            # neighbours'. Without a BN the length is the output's scale:
            # a new filter as strong as the trained ones injects a
            # full-strength random signal (the paper's ConvNet, 45k images:
            # hold-out 0.65 -> 0.47 right after the first re-init, against
            # 0.54 at the initializer's length), so it keeps the paper's.
            norms = np.full(len(dropped), float(np.median(kept_norms)))
        if not np.any(norms > 0):
            # A zeros (or constant-zero) initializer: borrow the kept
            # filters' typical length instead.
            norms = np.full(len(dropped), float(np.mean(kept_norms))
                            if kept.size and np.mean(kept_norms) > 0 else 1.0)
        flat[:, dropped] = (directions * norms[:, None]).T
        self.kernel.assign(flat.reshape(shape).astype("float32"))

        def reset(variable, initializer, seed):
            if variable is None:
                return
            value = to_numpy(variable)
            fresh_value = _sample(initializer, value.shape, seed)
            value[..., dropped] = fresh_value[..., dropped]
            variable.assign(value.astype("float32"))

        reset(self.bias, getattr(self.conv, "bias_initializer", "zeros"),
              seeds[1])
        if self.bn is not None and self.bn_mode == "paper":
            reset(self.gamma, self.bn.gamma_initializer, seeds[2])
            reset(self.beta, self.bn.beta_initializer, seeds[3])
            reset(self.moving_mean, self.bn.moving_mean_initializer, seeds[4])
            reset(self.moving_variance, self.bn.moving_variance_initializer,
                  seeds[5])
        elif self.bn is not None:
            self._enter_like_kept(dropped, flat)
        self.mask.assign(np.ones(self.filters, "float32"))
        return dropped, directions, mode

    def _enter_like_kept(self, dropped, flat):
        """BN of re-initialised channels, `bn_mode="preserve"`.

        Whatever the BN initializers say (gamma 1, statistics 0 / 1), a
        trained layer's channels have their own scale: a new channel with
        gamma 1 among kept channels of gamma ~0.3 injects a large random
        signal (ResNet-20: accuracy 0.57 -> 0.37 in training mode at the
        re-init), and its moving variance 1 against a real variance of
        2^2.5 to 2^8 breaks inference. Here a new channel enters with
        the median |gamma| of its layer's kept channels (its output's
        standard deviation then matches theirs), keeps its held offset
        (its mean output does not jump), and gets a moving variance
        estimated from the kept filters (variance per squared filter
        norm, times its own squared norm) and a moving mean of 0, until
        `StatisticsRestart` replaces both with measured ones after the
        next steps.
        """
        kept = np.flatnonzero(self.mask.numpy() > 0)
        if self.gamma is not None:
            gamma = to_numpy(self.gamma)
            typical = float(np.median(np.abs(gamma[..., kept]))) if (
                kept.size) else 1.0
            gamma[..., dropped] = typical if typical > 0 else 1.0
            self.gamma.assign(gamma.astype("float32"))
        norms = np.sum(flat**2, axis=0)
        mean = to_numpy(self.moving_mean)
        variance = to_numpy(self.moving_variance)
        per_norm = variance[..., kept] / np.maximum(norms[kept], 1e-12)
        scale = float(np.median(per_norm)) if kept.size else 1.0
        variance[..., dropped] = np.maximum(scale * norms[dropped], 1e-6)
        mean[..., dropped] = 0.0
        self.moving_mean.assign(mean.astype("float32"))
        self.moving_variance.assign(variance.astype("float32"))

    def reset_optimizer_slots(self, optimizer, indices):
        """Zeroes the optimizer state of filter entries `indices`.

        EMA copies of the weights (`use_ema=True`) take the new values
        instead. Returns the number of slot variables touched.
        """
        keep = np.ones(self.filters, "float32")
        keep[np.asarray(indices, "int64")] = 0.0
        touched = 0
        for variable in self.parameters:  # the held offset's slots too
            for name, slot in compat.optimizer_slots(optimizer, variable):
                value = to_numpy(slot)
                if any(part in name for part in _AVERAGE_SLOT_NAMES):
                    new = to_numpy(variable)
                    value = np.where(keep > 0, value, new)
                else:
                    value = value * keep
                slot.assign(value.astype(np.dtype(slot.dtype)))
                touched += 1
        return touched


def _statistics_probes(model, layers):
    """`[(probe_model, layers)]`: functional models that output the
    inputs of `layers`, or None when some layer is outside any functional
    graph of `model` (e.g. a subclassed model)."""
    roots = []

    def visit(candidate):
        if isinstance(candidate, keras.Model):
            if getattr(candidate, "inputs", None):
                roots.append(candidate)
                return
            for sub in getattr(candidate, "layers", []):
                visit(sub)

    visit(model)
    probes, found = [], set()
    for root in roots:
        inside = {id(layer) for layer in graph_lib.all_layers(root)}
        chosen = [layer for layer in layers if id(layer) in inside]
        if not chosen:
            continue
        try:
            probe = keras.Model(root.inputs, [layer.input for layer in chosen])
        except (ValueError, AttributeError):
            return None
        probes.append((probe, chosen))
        found.update(id(layer) for layer in chosen)
    if len(found) != len(layers):
        return None
    return probes


def take_batches(data, count, batch_size=128):
    """Up to `count` input batches from `data`: an array of inputs, an
    `(inputs, labels)` tuple of arrays (labels unused), or a
    `tf.data.Dataset` of inputs or `(inputs, labels, ...)` tuples."""
    if data is None:
        return []
    if isinstance(data, tuple) and data:
        data = data[0]
    if isinstance(data, tf.data.Dataset):
        batches = []
        for element in data.take(count):
            if isinstance(element, (tuple, list)):
                element = element[0]
            batches.append(element)
        return batches
    array = np.asarray(data)
    return [array[i:i + batch_size]
            for i in range(0, min(len(array), count * batch_size), batch_size)]


def _check_calibration_shape(model, batches):
    """Refuses calibration batches the model cannot take now, rather than
    at the first drop, after S1 has trained."""
    inputs = getattr(model, "inputs", None)
    if not batches or not inputs or len(inputs) != 1:
        return
    expected = tuple(inputs[0].shape[1:])
    got = tuple(np.shape(batches[0])[1:])
    if not graph_lib.shapes_match(expected, got):
        raise ValueError(
            f"calibration_data has inputs of shape {got} per example; model "
            f"'{model.name}' takes {expected}. Pass training inputs (an "
            "array, an (inputs, labels) tuple or a dataset of batches).")


class StatisticsRestart:
    """Re-estimates BN moving statistics after an event, without data.

    A drop or re-initialisation changes what every BatchNormalization
    after it sees, but its moving mean and variance follow only at the
    speed of their momentum `m` (Keras' default 0.99: hundreds of steps),
    so the network runs in inference mode with statistics of a network
    that no longer exists. Measured on ResNet-20 (CIFAR-10, 30% of the
    filters of every layer dropped): 12% accuracy in inference mode right
    after the drop, 29% with exact statistics (the training-mode figure).

    The fix restarts every moving average at the event with a bias
    correction (as Adam corrects its moments): after `n` steps each
    statistic is set to `(raw - m^n * last) / (1 - m^n)`, where `raw` is
    the value the layer's own update left and `last` the value written at
    the previous correction. The result is exactly the momentum-weighted
    average of the batch statistics of the steps since the event, with
    the stale prior removed; it needs no data and no change to the traced
    step. Corrections run at `n = 1, 2, 4, 8, ...` (any gap is exact)
    until `m^n < 1e-3`. A layer that did not update (frozen, or a held
    channel) is left as it is (`raw == last` gives `last`).

    Only layers that update every channel at every step are restarted:
    Keras `BatchNormalization` (and keras_slim's `SlimBatchNormalization`
    at full width), without renorm; layers with per-width statistics are
    left alone.
    """

    def __init__(self, model):
        self.layers = []
        for layer in ranking_lib.ordered_layers(model):
            if not isinstance(layer, keras.layers.BatchNormalization):
                continue
            if getattr(layer, "renorm", False) or not layer.built:
                continue
            mean = getattr(layer, "moving_mean", None)
            variance = getattr(layer, "moving_variance", None)
            if not (_is_variable(mean) and _is_variable(variance)):
                continue
            if len(mean.shape) != 1:  # per-width statistics
                continue
            momentum = float(layer.momentum)
            if not 0.0 < momentum < 1.0:
                continue
            self.layers.append((layer, momentum))
        self._probes = None

        def variable(value, name, dtype=None):
            # Checkpointed with RePr's state, so a resumed run corrects at
            # the same steps with the same values as an uninterrupted one.
            return tf.Variable(
                value, dtype=dtype, trainable=False, name=f"repr_{name}",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        # The event's step (-1: no restart running) and the next gap.
        self.start_var = variable(-1, "restart_step", tf.int64)
        self.gap_var = variable(0, "restart_gap", tf.int64)
        # Per layer, the statistics written at the last correction.
        self.last_vars = [
            (variable(np.zeros(layer.moving_mean.shape, "float32"),
                      f"restart_mean_{i}"),
             variable(np.zeros(layer.moving_variance.shape, "float32"),
                      f"restart_variance_{i}"))
            for i, (layer, _) in enumerate(self.layers)
        ]

    @property
    def variables(self):
        """The restart's state, for RePr's checkpoint."""
        return [self.start_var, self.gap_var] + [
            v for pair in self.last_vars for v in pair]

    @property
    def start_step(self):
        step = int(self.start_var.numpy())
        return None if step < 0 else step

    @property
    def next_gap(self):
        return int(self.gap_var.numpy())

    def measure(self, model, batches):
        """Sets every restarted layer's statistics to those of `batches`.

        The exact version of the restart, for when training images are at
        hand (`RePrController(calibration_data=...)`): the model runs in
        training mode on each batch (as a training step would, without
        updating any weight), and each BN's moving mean and variance
        become the average of its batch means and variances. Every other
        variable the calls touch is put back.

        Returns:
            False (and changes nothing) when the layers cannot be reached
            from a functional graph of `model`.
        """
        if not self.layers or not batches:
            return True  # nothing to measure
        if self._probes is None:
            probes = _statistics_probes(
                model, [layer for layer, _ in self.layers])
            if probes is None:
                return False

            def moments(probe):
                # One traced call per probe: batch moments of every
                # layer's input, in training mode as a step computes them.
                @tf.function(reduce_retracing=True)
                def run(batch):
                    outputs = probe(batch, training=True)
                    if not isinstance(outputs, (list, tuple)):
                        outputs = [outputs]
                    result = []
                    for output in outputs:
                        output = tf.cast(output, tf.float32)
                        axes = list(range(len(output.shape) - 1))
                        result.append(tf.nn.moments(output, axes))
                    return result

                return run

            self._probes = [(moments(probe), layers)
                            for probe, layers in probes]
        saved = [(v, to_numpy(v)) for v in model.non_trainable_variables]
        sums = {}
        for batch in batches:
            for run, layers in self._probes:
                for layer, (mean, variance) in zip(layers, run(batch)):
                    old = sums.get(id(layer), (0.0, 0.0))
                    sums[id(layer)] = (
                        old[0] + to_numpy(mean).astype("float64"),
                        old[1] + to_numpy(variance).astype("float64"))
        for variable, value in saved:
            variable.assign(value)
        for layer, _ in self.layers:
            mean, variance = sums[id(layer)]
            for variable, value in ((layer.moving_mean, mean),
                                    (layer.moving_variance, variance)):
                variable.assign(
                    (value / len(batches)).astype(np.dtype(variable.dtype)))
        return True

    def start(self, step):
        """Marks `step` as the event: later corrections average from it."""
        if not self.layers:
            return
        for (layer, _), (mean, variance) in zip(self.layers, self.last_vars):
            mean.assign(tf.cast(layer.moving_mean, tf.float32))
            variance.assign(tf.cast(layer.moving_variance, tf.float32))
        self.start_var.assign(int(step))
        self.gap_var.assign(1)

    @property
    def active(self):
        return self.start_step is not None

    def update(self, step):
        """Corrects the statistics if a correction is due after `step`."""
        start = self.start_step
        if start is None:
            return False
        gap = int(step) - start
        if gap < self.next_gap:
            return False
        largest = 0.0
        for (layer, momentum), pair in zip(self.layers, self.last_vars):
            decay = momentum ** gap
            largest = max(largest, decay)
            for variable, stored in zip(
                    (layer.moving_mean, layer.moving_variance), pair):
                raw = to_numpy(variable).astype("float64")
                last = to_numpy(stored).astype("float64")
                value = (raw - decay * last) / (1.0 - decay)
                # Entries that did not move (held, frozen) stay bit-exact.
                value = np.where(raw == last, last, value)
                if variable is layer.moving_variance:
                    value = np.maximum(value, 0.0)
                value = value.astype("float32")
                variable.assign(value.astype(np.dtype(variable.dtype)))
                stored.assign(value)
        self.gap_var.assign(2 * gap)
        if largest < 1e-3:
            self.start_var.assign(-1)
        return True


# RePr exactly as in the paper (ranking, cut-off, BN handling): pass as
# `RePrCallback(..., **PAPER)` or `RePrController(..., **PAPER)`.
PAPER = {
    "normalization": "paper",
    "max_drop_per_layer": None,
    "skip_overcomplete": False,
    "bn_mode": "paper",
    "reestimate_bn": False,
    "compensate_drop": False,
}


class RePrState(tf.Module):
    """RePr's checkpointed state: add it to your `tf.train.Checkpoint`.

    Holds how many schedule events have happened, per ranked layer the
    filter mask, the kernel at the last drop and the BN statistics (and
    offset) held during S2, and the state of the BN statistics restart.
    """

    def __init__(self, events_done, units, restart=None):
        super().__init__(name="repr_state")
        self.events_done = events_done
        # Lists in ranked-layer order (checkpoint keys must not depend on
        # auto-generated layer names); `layer_names` says which is which.
        self.layer_names = [u.name for u in units]
        self.masks = [u.mask for u in units]
        self.previous_kernels = [u.previous_kernel for u in units]
        self.held_means = [u.held_mean for u in units if u.held_mean is not None]
        self.held_variances = [
            u.held_variance for u in units if u.held_variance is not None
        ]
        self.held_offsets = [
            u.held_offset for u in units if u.held_offset is not None
        ]
        # The BN statistics restart after the last event (if any).
        self.statistics_restart = list(restart.variables) if restart else []


def check_options(drop_fraction, ranking, cutoff, normalization,
                  max_drop_per_layer, skip_overcomplete, bn_mode, min_kept):
    """The ranking and dropping options of `RePrController`, validated.

    Returns:
        A dict of the same names with their checked values.

    Raises:
        ValueError: naming the first bad option and what it allows.

    Example:

    >>> check_options(0.3, "orthogonality", "global", "chance", 0.5, True,
    ...               "preserve", 1)["drop_fraction"]
    0.3
    """
    if isinstance(min_kept, bool) or not isinstance(
            min_kept, numbers.Integral) or (
        min_kept < 1
    ):
        raise ValueError(f"`min_kept` must be an integer >= 1; got "
                         f"{min_kept!r}.")
    return {
        "drop_fraction": ranking_lib.check_fraction(drop_fraction),
        "ranking": ranking_lib.check_method(ranking),
        "cutoff": ranking_lib.check_cutoff(cutoff),
        "normalization": ranking_lib.check_normalization(normalization),
        "max_drop_per_layer": ranking_lib.check_ceiling(max_drop_per_layer),
        "skip_overcomplete": bool(skip_overcomplete),
        "bn_mode": check_bn_mode(bn_mode),
        "min_kept": int(min_kept),
    }


class RePrController:
    """Drives RePr on one model: ranks, drops, holds, re-initialises.

    Used by `RePrCallback` for `model.fit` and by the trainers' loop; the
    driver (1) runs `wrap_train_step(model.train_step)` as its step, so the
    dropped filters are held inside the traced step, (2) stops after
    `next_event_step(step)` steps and (3) calls `update(step)` after every
    run of steps. Every event happens exactly after its step count.

    Args:
        model: A built Keras model with convolutions (stock or slim).
        schedule: A `RePrSchedule` (in optimizer steps), or None to set
            `controller.schedule` later (before the first `update`).
        drop_fraction: Share of the ranked filters dropped each cycle,
            in (0, 1).
        ranking: "orthogonality" (RePr), "l1" or "l2" (smallest first).
        cutoff: "global" (one cut-off over all layers, the paper) or
            "per_layer" (the same share of every layer; see
            `FilterRanking.select`).
        exclude_first: Never drop the model's first convolution.
        layers: Optional names of the conv layers to rank and drop.
        min_kept: Filters every layer keeps.
        avoid_previous: Re-initialised filters also avoid their own old
            values when the null space has room.
        seed: Seed of the re-initialisation (with cycle and layer).
        verbose: 1 prints one line per event.
        normalization: "chance" or "paper" (see `rank_filters`).
        max_drop_per_layer: Largest share of a layer dropped at once, or
            None (see `FilterRanking.select`).
        skip_overcomplete: Leave out layers with more filters than fan-in.
        reestimate_bn: Re-estimate BN statistics after every event
            (`StatisticsRestart`).
        bn_mode: "preserve" or "paper" (see the module doc).
        calibration_data: Optional training inputs (an array, or a
            `tf.data.Dataset` of inputs or `(inputs, labels)`): with it,
            the BN statistics are measured on `calibration_batches` of its
            batches right at each event, so inference is right at once
            instead of after the next training step.
        calibration_batches: How many batches of `calibration_data`.
        compensate_drop: At each drop, refit the layer that reads a
            dropped filter's channel so the kept channels take over what
            they can predict of it (see `keras_slim.repr.compensate`);
            needs `calibration_data` (a warning says so without it).
            Off by default: it keeps far more accuracy right after a
            drop, but did not improve the final accuracy (README).

    `**PAPER` (`normalization="paper"`, no ceiling, every conv ranked,
    `bn_mode="paper"`, `reestimate_bn=False`, `compensate_drop=False`)
    gives the paper's method.

    Raises:
        ValueError: for a bad argument, a model with no conv layer to rank
            or a layer whose filters cannot be masked.

    Example:

    >>> controller = RePrController(model, RePrSchedule(1000, 500, 3), 0.3)
    >>> step_fn = controller.wrap_train_step(model.train_step)
    >>> checkpoint = tf.train.Checkpoint(model=model,
    ...     optimizer=model.optimizer, repr=controller.state)
    """

    def __init__(
        self,
        model,
        schedule=None,
        drop_fraction=0.3,
        ranking="orthogonality",
        cutoff="global",
        exclude_first=True,
        layers=None,
        min_kept=1,
        avoid_previous=True,
        seed=0,
        verbose=0,
        normalization="chance",
        max_drop_per_layer=0.5,
        skip_overcomplete=True,
        reestimate_bn=True,
        bn_mode="preserve",
        calibration_data=None,
        calibration_batches=4,
        compensate_drop=False,
    ):
        vars(self).update(check_options(
            drop_fraction=drop_fraction, ranking=ranking, cutoff=cutoff,
            normalization=normalization,
            max_drop_per_layer=max_drop_per_layer,
            skip_overcomplete=skip_overcomplete, bn_mode=bn_mode,
            min_kept=min_kept))
        if schedule is not None and not isinstance(
            schedule, schedule_lib.RePrSchedule
        ):
            raise ValueError(
                f"`schedule` must be a RePrSchedule; got {schedule!r}."
            )
        self.schedule = schedule
        self.model = model
        self.avoid_previous = bool(avoid_previous)
        self.seed = int(seed)
        self.verbose = int(verbose)
        convs, self.skipped = ranking_lib.rankable_layers(
            model, exclude_first=exclude_first, layers=layers,
            skip_overcomplete=self.skip_overcomplete,
        )
        self.layer_names = [layer.name for layer in convs]
        calls = graph_calls(model)
        self._warn_if_graph_unknown(convs, calls)
        strategy = getattr(model, "distribute_strategy", None) or (
            tf.distribute.get_strategy()
        )
        with strategy.scope():
            self.events_done = tf.Variable(
                0,
                dtype=tf.int64,
                trainable=False,
                name="repr_events_done",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            self.units = [
                FilterUnit(conv, following_batch_norm(conv, calls), i,
                           self.bn_mode)
                for i, conv in enumerate(convs)
            ]
            self.restart = (StatisticsRestart(model) if reestimate_bn
                            else None)
        self.state = RePrState(self.events_done, self.units, self.restart)
        self.schedule_start = None  # see `track_schedule_start`
        self.history = []
        self.last_ranking = None  # the `FilterRanking` of the last drop
        self.event_seconds = 0.0
        self._warned = set()
        self.compensate_drop = bool(compensate_drop)
        self.calibration = []
        if calibration_data is not None and (
                self.restart is not None or self.compensate_drop):
            self.calibration = take_batches(calibration_data,
                                           int(calibration_batches))
            _check_calibration_shape(model, self.calibration)
        elif calibration_data is not None:
            warnings.warn(
                "calibration_data is not used: it serves the BN statistics "
                "re-estimate (reestimate_bn=True) and compensated drops "
                "(compensate_drop=True), both off here (e.g. with "
                "**keras_slim.repr.PAPER).", stacklevel=3)
        self._consumers = None

    def _warn_if_graph_unknown(self, convs, calls):
        called = {id(c.layer) for c in calls}
        has_graph = all(id(conv) in called for conv in convs)
        has_bn = any(
            isinstance(layer, keras.layers.BatchNormalization)
            for layer in ranking_lib.ordered_layers(self.model)
        )
        if has_bn and not has_graph:
            warnings.warn(
                f"Model '{self.model.name}' is not functional: RePr cannot "
                "see which BatchNormalization follows which convolution. "
                "Dropped filters output zero at the convolution, but a BN "
                "after it still adds its offset. Build the model with the "
                "functional API for exact masking.",
                stacklevel=3,
            )

    def track_schedule_start(self):
        """The variable where a driver that starts the schedule late keeps
        its start (-1 until set), created once and added to `state`.

        `RePrCallback` starts the schedule at its first `fit`; loops that
        set `schedule` themselves (counted from step 0) do not need it, and
        their checkpoints do not hold it.
        """
        if self.schedule_start is None:
            strategy = getattr(self.model, "distribute_strategy", None) or (
                tf.distribute.get_strategy())
            with strategy.scope():
                self.schedule_start = tf.Variable(
                    -1,
                    dtype=tf.int64,
                    trainable=False,
                    name="repr_schedule_start",
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
            self.state.schedule_start = self.schedule_start
        return self.schedule_start

    # ------------------------------------------------------------ step
    def in_sub_network(self):
        """Whether the dropped filters are out now (a tensor in graphs)."""
        return tf.equal(tf.math.floormod(self.events_done, 2), 1)

    def hold(self):
        """Re-applies the masks (traced or eager).

        Runs every step, S2 or not: with every mask at one it writes each
        value back unchanged (`x * 1`, `where(True, x, .)` are exact). A
        `tf.cond` around it would save a few element-wise ops per step but
        cannot hold variables that synchronise on write (BN statistics
        with `aggregation="mean"` under `tf.distribute`).
        """
        for unit in self.units:
            unit.hold()

    def wrap_train_step(self, train_step):
        """`train_step` followed by `hold()`, for `model.fit` or a loop.

        Example:

        >>> model.train_step = controller.wrap_train_step(model.train_step)
        """

        def step(data):
            logs = train_step(data)
            self.hold()
            return logs

        step.__wrapped__ = train_step
        return step

    # ---------------------------------------------------------- events
    def _require_schedule(self):
        if self.schedule is None:
            raise ValueError(
                "RePrController has no schedule: set `controller.schedule = "
                "RePrSchedule(s1, s2, cycles)` first."
            )
        return self.schedule

    def next_event_step(self, step):
        """The next step count at which `update` must run, or None: the
        schedule's next event, or a correction of the BN statistics after
        one (see `StatisticsRestart`). Drivers stop their runs of steps
        there, so an interrupted and resumed run corrects at the same
        steps as an uninterrupted one."""
        candidates = [self._require_schedule().next_event_step(int(step))]
        if self.restart is not None and self.restart.active:
            candidates.append(self.restart.start_step + self.restart.next_gap)
        candidates = [c for c in candidates if c is not None]
        return min(candidates) if candidates else None

    def overdue_event(self, step, late_steps=0):
        """The next event if it was due more than `late_steps` steps
        before `step`, else None."""
        events = self._require_schedule().events
        done = int(self.events_done.numpy())
        if done < len(events) and events[done].step < int(step) - late_steps:
            return events[done]
        return None

    def check_not_overdue(self, step, late_steps=0):
        """Raises if the next event was due more than `late_steps` steps
        before `step` (see `update`)."""
        event = self.overdue_event(step, late_steps)
        if event is not None:
            done = int(self.events_done.numpy())
            raise ValueError(
                f"RePr's {event.kind} of cycle {event.cycle + 1} was due "
                f"after step {event.step}, but training is at step "
                f"{step} and it has not happened. Either the training "
                "loop ran past it (stop every run of steps at "
                "`next_event_step`), or the model was "
                "restored without RePr's state (checkpoint "
                "`controller.state` / `RePrCallback.state` with it)"
                + (", or its optimizer had trained before RePr was "
                   "added: the schedule counts the optimizer's steps "
                   "from 0, so compile the model with a new optimizer "
                   "first." if done == 0 and self.schedule_start is None
                   else ".")
            )

    def update(self, step, late_steps=0):
        """Runs every event due once `step` optimizer steps are done.

        Call it after each run of training steps; runs of steps must stop
        at `next_event_step`.

        Args:
            step: Optimizer steps done.
            late_steps: How many steps late an event may run (a driver
                that cannot stop at every step, like `fit` with
                `steps_per_execution > 1`); a late event's record says
                by how much (`"late"`). A loop that continues a run
                `fit` drove passes that fit's `steps_per_execution - 1`.

        Returns:
            The list of event records performed (dicts, also appended to
            `history`).

        Raises:
            ValueError: if an event is overdue (the driver ran past it, or
                RePr's state was not restored with the model's).
        """
        schedule = self._require_schedule()
        step = int(step)
        events = schedule.events
        self.check_not_overdue(step, late_steps)
        done = int(self.events_done.numpy())
        performed = []
        if self.restart is not None and self.restart.active:
            start = time.perf_counter()
            self.restart.update(step)
            self.event_seconds += time.perf_counter() - start
        while done < len(events) and events[done].step <= step:
            event = events[done]
            start = time.perf_counter()
            if event.kind == schedule_lib.DROP:
                record = self.drop(event.cycle)
            else:
                record = self.reinitialize(event.cycle)
            seconds = time.perf_counter() - start
            self.event_seconds += seconds
            done += 1
            self.events_done.assign(done)
            record.update(step=step, event=event.kind, cycle=event.cycle,
                          seconds=seconds)
            if event.step < step:
                record["late"] = step - event.step
            self._record_learning_rate(record, step)
            self.history.append(record)
            performed.append(record)
            if self.verbose:
                self._print(record)
        if performed:
            self._after_event(step)
        return performed

    def _after_event(self, step):
        """Re-estimates the BN statistics after an event (see
        `StatisticsRestart`): measured on `calibration_data` at once when
        given, then refined from the training steps that follow."""
        if self.restart is None:
            return
        start = time.perf_counter()
        if self.calibration:
            if not self.restart.measure(self.model, self.calibration):
                self._warn_once(
                    "probe", "RePr cannot reach the BatchNormalization "
                    "layers of this model from a functional graph, so "
                    "calibration_data is not used; their statistics are "
                    "re-estimated from the next training steps instead.")
                self.calibration = []
            for unit in self.units:
                unit.hold()  # dropped channels keep their held statistics
        self.restart.start(step)
        self.event_seconds += time.perf_counter() - start

    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def check_run(self, total_steps, learning_rate=None, start_step=0,
                  action="warn",
                  min_lr_fraction=schedule_lib.MIN_LR_FRACTION,
                  min_tail_fraction=schedule_lib.MIN_TAIL_FRACTION):
        """Checks the schedule against the run that is about to train.

        See `schedule.check_run` for what is checked (events after the
        run's end, too little training after the last re-initialisation,
        events at a learning rate far below the run's peak).

        Args:
            total_steps: Optimizer steps at which the run ends.
            learning_rate: The optimizer's learning rate or schedule
                (default: the model's optimizer's, when it has one).
            start_step: Optimizer steps already done.
            action: "warn" (a `UserWarning` per problem), "raise" (a
                `ValueError` naming them all) or "off".

        Returns:
            The list of problems found.
        """
        schedule_lib.check_schedule_check(action)
        if action == "off":
            return []
        if learning_rate is None:
            learning_rate = compat.optimizer_learning_rate(
                getattr(self.model, "optimizer", None))
        problems = schedule_lib.check_run(
            self._require_schedule(), total_steps, learning_rate, start_step,
            min_lr_fraction, min_tail_fraction)
        if problems and action == "raise":
            raise ValueError(
                " ".join(problems) + " (schedule_check='warn' trains anyway, "
                "with a warning.)"
            )
        for problem in problems:
            warnings.warn(problem, stacklevel=3)
        return problems

    def finish(self, step, warn=True):
        """Ends RePr's part of a run that stops after `step` steps.

        A run that stops while filters are dropped (in S2, or exactly at a
        re-initialisation's step, which a driver that runs events before
        the next step never reaches) would leave them zero: with plain SGD
        they could never train again. `finish` brings them back,
        re-initialised, and counts it as that cycle's re-initialisation
        (said in a warning when it comes before its scheduled step).

        Args:
            step: Optimizer steps done.
            warn: Warn when the re-initialisation comes before its
                scheduled step (callers that warn themselves pass False).

        Returns:
            The event record, or None when no filter was out.
        """
        schedule = self._require_schedule()
        done = int(self.events_done.numpy())
        if done % 2 == 0 or done >= len(schedule.events):
            return None
        event = schedule.events[done]
        step = int(step)
        start = time.perf_counter()
        record = self.reinitialize(event.cycle)
        seconds = time.perf_counter() - start
        self.event_seconds += seconds
        self.events_done.assign(done + 1)
        early = step < event.step
        record.update(step=step, event=event.kind, cycle=event.cycle,
                      seconds=seconds, early=early)
        if self.calibration:
            self._after_event(step)
        self._record_learning_rate(record, step)
        self.history.append(record)
        if early and warn:
            warnings.warn(
                f"Training stopped after step {step}, while RePr's dropped "
                f"filters were out (cycle {event.cycle + 1}; its "
                f"re-initialisation was due after step {event.step}). They "
                "are brought back now, re-initialised, so the model is "
                "whole; they have not trained since. The schedule did not "
                "fit this run: see the warning at its start.",
                stacklevel=2,
            )
        if self.verbose:
            self._print(record)
        return record

    def _record_learning_rate(self, record, step):
        rate = compat.optimizer_learning_rate(
            getattr(self.model, "optimizer", None))
        try:
            record["learning_rate"] = schedule_lib.learning_rate_at(rate, step)
        except (TypeError, ValueError):  # pragma: no cover
            record["learning_rate"] = None

    def _print(self, record):
        counts = record["filters"]
        total = sum(counts.values())
        per_layer = ", ".join(f"{k}: {v}" for k, v in counts.items() if v)
        verb = "dropped" if record["event"] == schedule_lib.DROP else (
            "re-initialised")
        print(
            f"RePr step {record['step']}, cycle {record['cycle'] + 1}/"
            f"{self.schedule.cycles}: {verb} {total} filters ({per_layer}) "
            f"in {record['seconds']:.2f} s", flush=True,
        )

    def drop(self, cycle=0):
        """Ranks the filters and takes the most redundant out (eager)."""
        for unit in self.units:
            if unit.dropped().size:
                raise ValueError(
                    f"Layer '{unit.name}' still has dropped filters: "
                    "re-initialise before dropping again."
                )
        ranking = ranking_lib.rank_filters(
            self.model, self.ranking, layers=self.layer_names,
            normalization=self.normalization, skip_overcomplete=False,
        )
        selection = ranking.select(self.drop_fraction, self.min_kept,
                                   self.cutoff, self.max_drop_per_layer)
        self.last_ranking = ranking
        if not any(len(v) for v in selection.values()):
            warnings.warn(
                f"RePr's drop of cycle {int(cycle) + 1} takes out no filter: "
                f"drop_fraction={self.drop_fraction:g} of "
                f"{len(ranking.order)} ranked filters with "
                f"max_drop_per_layer={self.max_drop_per_layer} and "
                f"min_kept={self.min_kept} leaves none to drop, so this "
                "cycle changes nothing. Raise drop_fraction or "
                "max_drop_per_layer, or lower min_kept.",
                stacklevel=3,
            )
        consumers = self._drop_consumers()
        explained = {}
        for unit in self.units:
            indices = selection.get(unit.name, np.zeros(0, "int64"))
            consumer = consumers.get(unit.name)
            if not len(indices) or not isinstance(
                    consumer, compensate_lib.Consumer):
                unit.drop(indices)
                continue
            # In graph order, so each fit sees the earlier layers' drops.
            before = consumer.read(self.calibration)
            unit.drop(indices)
            after = consumer.read_after_drop(before, indices,
                                             self.calibration[0])
            rng = np.random.default_rng([self.seed, int(cycle), unit.index])
            explained[unit.name] = consumer.refit(before, after, indices, rng)
        return {
            "filters": {
                u.name: int(len(selection.get(u.name, []))) for u in self.units
            },
            "dropped": {k: v.tolist() for k, v in selection.items()},
            "compensated": explained,
        }

    def last_summary(self):
        """The ranking table of the last drop (`FilterRanking.summary`)
        with the filters this controller dropped from each layer, or None
        before the first drop.

        Example:

        >>> print(callback.controller.last_summary())
        """
        if self.last_ranking is None:
            return None
        return self.last_ranking.summary(
            self.drop_fraction, self.min_kept, self.cutoff,
            self.max_drop_per_layer)

    def _drop_consumers(self):
        """`{layer name: Consumer or reason}` when drops are compensated,
        else `{}` (found once, on the first drop)."""
        if not self.compensate_drop:
            return {}
        if not self.calibration:
            self._warn_once(
                "compensate", "RePr's compensate_drop needs calibration_data "
                "(a few batches of training inputs): without it the dropped "
                "filters are simply taken out, and accuracy falls further "
                "right after each drop. Pass calibration_data, or "
                "leave compensate_drop off.")
            return {}
        if self._consumers is None:
            self._consumers = compensate_lib.consumers(
                self.model, [unit.conv for unit in self.units])
        return self._consumers

    def reinitialize(self, cycle=0):
        """Brings every dropped filter back, re-initialised (eager)."""
        optimizer = getattr(self.model, "optimizer", None)
        counts, modes = {}, {}
        for unit in self.units:
            seeds = np.random.SeedSequence([self.seed, int(cycle), unit.index])
            result = unit.reinitialize(seeds, self.avoid_previous)
            if result is None:
                counts[unit.name] = 0
                continue
            indices, _, mode = result
            counts[unit.name] = int(len(indices))
            modes[unit.name] = mode
            if mode == reinit_lib.CLOSEST and unit.name not in self._warned:
                self._warned.add(unit.name)
                fan_in = int(np.prod(unit.kernel.shape[:-1]))
                warnings.warn(
                    f"Layer '{unit.name}' has {unit.filters} filters for a "
                    f"fan-in of {fan_in}: the null space of its "
                    f"{unit.filters - len(indices)} kept filters cannot hold "
                    f"{len(indices)} new orthogonal filters. Using the "
                    "directions closest to orthogonal instead (the kept "
                    "filters' smallest singular vectors).",
                    stacklevel=2,
                )
            if optimizer is not None:
                unit.reset_optimizer_slots(optimizer, indices)
        return {"filters": counts, "modes": modes}
