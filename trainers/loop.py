"""The custom `tf.distribute` training loop, with checkpoints and a report.

The loop drives `SlimmableModel.train_step`, the same step `model.fit` runs,
through `strategy.run`; it adds what a long run on a cluster needs and `fit`
does not give: several steps per `tf.function` call over a distributed
iterator, checkpoints every N steps that a restarted command resumes from
exactly, TensorBoard summaries, and, at the end, BN calibration and a
per-width accuracy report.

Example:

>>> strategy = distribute.get_strategy("mirrored")
>>> report = train(TrainConfig(method="us", epochs=5, model_dir="/tmp/us"),
...                strategy)
"""

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

import keras_slim
from keras_slim import data as data_lib
from keras_slim import files
from keras_slim import width as width_lib
from . import cli
from . import deploy
from . import distribute
from . import methods

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine", "linear", "step")
# BN scale/offset and biases are not decayed (He et al., "Bag of Tricks").
NO_DECAY_NAMES = ("gamma", "beta", "bias")
# Written to model_dir: the settings a restart must share with the run it
# resumes (`TrainConfig.identity`), checked before anything is restored.
_RUN_CONFIG = "run_config.json"
# Per-model defaults of `--model_kwargs`: LeNet-3C1L's unpadded convolutions
# need 18x18 inputs; "same" padding lets the default run on 8x8 digits.
DEFAULT_MODEL_KWARGS = {"lenet_3c1l": {"padding": "same"}}


class CheckpointError(RuntimeError):
    """`model_dir` holds a checkpoint this run cannot (or must not) resume."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs except the strategy.

    `trainers/flags.py` documents each field (`python -m trainers.train
    --help`); defaults here are the flags' defaults.
    """

    method: str = "us"
    model: str = "lenet_3c1l"
    model_kwargs: str = ""
    dataset: str = "digits"
    data_dir: str = ""
    validation_split: float = 0.1
    augment: bool = False
    skip_bad_images: bool = False
    download: bool = False
    widths: tuple = (0.25, 0.5, 0.75, 1.0)
    width_range: tuple = (0.25, 1.0)
    report_widths: tuple = ()
    sandwich_size: int = 4
    inplace_distillation: bool = True
    per_replica_widths: bool = False
    epochs: int = 10
    train_steps: int = 0
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    lr_step_boundaries: tuple = (0.5, 0.75)
    lr_step_factor: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    sync_bn: bool = False
    model_dir: str = ""
    seed: int = 0
    deterministic: bool = False
    steps_per_loop: int = 20
    checkpoint_every_steps: int = 200
    max_checkpoints: int = 3
    calibration_examples: int = 5000
    searched_config: str = ""
    export: tuple = ()
    quantize: str = ""
    verbose: int = 1
    # RePr (--method=repr): schedule in epochs, share of filters dropped.
    repr_s1: int = 20
    repr_s2: int = 10
    repr_cycles: int = 3
    repr_drop_fraction: float = 0.3
    repr_ranking: str = "orthogonality"
    repr_cutoff: str = "global"
    repr_compensate_drop: bool = False
    repr_paper: bool = False

    def resolved_model_kwargs(self):
        """`--model_kwargs`, or the model's default when it is empty."""
        if self.model_kwargs:
            return methods.parse_model_kwargs(self.model_kwargs)
        return dict(DEFAULT_MODEL_KWARGS.get(self.model, {}))

    def resolved_model_dir(self):
        """`--model_dir`, or a fixed directory named after the run."""
        if self.model_dir:
            return self.model_dir
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.method}-{self.model}-"
                      f"{self.dataset}")
        return os.path.join(tempfile.gettempdir(), "keras_slim", name)

    def identity(self):
        """The settings a restart must share with the run it resumes."""
        method = methods.get(self.method)
        slim_kwargs = method.slim_kwargs(self)
        slim_kwargs.pop("synchronized_bn", None)
        return json.loads(json.dumps({
            "method": self.method,
            "model": self.model,
            "model_kwargs": self.resolved_model_kwargs(),
            "dataset": self.dataset,
            "widths": slim_kwargs,
            "optimizer": self.optimizer,
            "batch_size": self.batch_size,
            "seed": self.seed,
            **({"repr": {
                "s1": self.repr_s1, "s2": self.repr_s2,
                "cycles": self.repr_cycles,
                "drop_fraction": self.repr_drop_fraction,
                "ranking": self.repr_ranking,
                "cutoff": self.repr_cutoff,
                **({"compensate_drop": True}
                   if self.repr_compensate_drop else {}),
                **({"paper": True} if self.repr_paper else {}),
            }} if self.method == "repr" else {}),
        }))


# --------------------------------------------------------------- optimizer
@keras.saving.register_keras_serializable(package="keras_slim_trainers")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak`, then `schedule` (counted from the warmup's end).

    Args:
        schedule: A schedule or a float (constant after warmup).
        warmup_steps: Steps of linear warmup from `peak / warmup_steps`.
        peak: Learning rate at the end of the warmup.
    """

    def __init__(self, schedule, warmup_steps, peak):
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)
        self.peak = float(peak)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        after = self.schedule
        if callable(after):
            after = after(keras.ops.maximum(step - self.warmup_steps, 0.0))
        if self.warmup_steps <= 0:
            return keras.ops.cast(after, "float32")
        warm = self.peak * (step + 1.0) / self.warmup_steps
        return keras.ops.where(step < self.warmup_steps, warm, after)

    def get_config(self):
        schedule = self.schedule
        if not isinstance(schedule, (int, float)):
            schedule = keras.saving.serialize_keras_object(schedule)
        return {
            "schedule": schedule,
            "warmup_steps": self.warmup_steps,
            "peak": self.peak,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.saving.deserialize_keras_object(
                config["schedule"]
            )
        return cls(**config)


def learning_rate_schedule(config, steps_per_epoch, total_steps):
    """The learning rate as a `keras.optimizers.schedules` object.

    `--lr_schedule` decays over the steps after the warmup: "cosine" to 0,
    "linear" to 0, "step" multiplies by `--lr_step_factor` at each fraction
    of `--lr_step_boundaries`, "constant" keeps `--learning_rate`.
    """
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(
            f"Unknown lr_schedule {config.lr_schedule!r}; expected one of "
            f"{', '.join(LR_SCHEDULES)}."
        )
    lr = float(config.learning_rate)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    decay_steps = max(1, total_steps - warmup)
    schedules = keras.optimizers.schedules
    if config.lr_schedule == "constant":
        schedule = lr
    elif config.lr_schedule == "cosine":
        schedule = schedules.CosineDecay(lr, decay_steps, alpha=0.0)
    elif config.lr_schedule == "linear":
        schedule = schedules.PolynomialDecay(
            lr, decay_steps, end_learning_rate=0.0, power=1.0
        )
    else:
        boundaries = sorted({
            max(1, int(round(f * decay_steps)))
            for f in config.lr_step_boundaries
        })
        values = [lr * config.lr_step_factor**i
                  for i in range(len(boundaries) + 1)]
        schedule = schedules.PiecewiseConstantDecay(boundaries, values)
    if warmup > 0:
        return Warmup(schedule, warmup, lr)
    return schedule


def build_optimizer(config, steps_per_epoch, total_steps):
    """SGD (momentum, Nesterov) or Adam with the schedule and weight decay.

    Weight decay is Keras' decoupled decay (each step multiplies a weight by
    `1 - learning_rate * weight_decay`) and skips BN's gamma/beta and every
    bias. Build the optimizer (`optimizer.build(variables)`) after this: the
    exclusion must be configured before.
    """
    schedule = learning_rate_schedule(config, steps_per_epoch, total_steps)
    decay = float(config.weight_decay) or None
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            schedule,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=decay,
        )
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule, weight_decay=decay)
    else:
        raise ValueError(
            f"Unknown optimizer {config.optimizer!r}; expected one of "
            f"{', '.join(OPTIMIZERS)}."
        )
    if decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer


def build_loss(config, model):
    """Cross-entropy on integer labels, or on one-hot ones with smoothing."""
    if config.label_smoothing:
        # Keras' sparse cross-entropy has no label smoothing: the training
        # labels are one-hot encoded instead (see `_training_stream`).
        return keras.losses.CategoricalCrossentropy(
            from_logits=model.outputs_logits,
            label_smoothing=config.label_smoothing,
        )
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=model.outputs_logits
    )


def build_compiled_model(config, info, steps_per_epoch, total_steps):
    """Builds and compiles the network of `config` with its optimizer.

    Call it inside `strategy.scope()`: model, optimizer state and metrics
    are then created as distributed variables.

    Args:
        config: A `TrainConfig`.
        info: The `keras_slim.data.DatasetInfo` of the training data.
        steps_per_epoch, total_steps: For the learning-rate schedule.

    Returns:
        A compiled `SlimmableModel` whose optimizer is built.
    """
    method = methods.get(config.method)
    model = method.build(config, info.input_shape, info.num_classes)
    optimizer = build_optimizer(config, steps_per_epoch, total_steps)
    model.compile(
        optimizer=optimizer,
        loss=build_loss(config, model),
        metrics=["accuracy"],
        **method.compile_kwargs(config),
    )
    # compile built the optimizer and the step's metrics (here, inside the
    # strategy's scope: a replica could not create variables).
    return model


# ------------------------------------------------------------------- loop
def make_train_function(model, strategy, controller=None):
    """A `tf.function(iterator, num_steps) -> logs` running `num_steps` steps.

    Each step is `strategy.run(model.train_step, ...)`: the very step
    `model.fit` runs. Metrics are reset at the start of a call, so the
    returned logs (read in cross-replica context, i.e. over every replica)
    average over the call's steps. `num_steps` is a tensor: calls of any
    length share one trace. A method's `controller` (RePr) wraps the step.
    """
    step_fn = model.train_step
    if controller is not None:
        step_fn = controller.wrap_train_step(step_fn)
    # As in Keras' own train function: the step is traced as written, not
    # rewritten by AutoGraph (its Python loops over widths must stay Python).
    step_fn = tf.autograph.experimental.do_not_convert(step_fn)

    @tf.function
    def train_steps(iterator, num_steps):
        for metric in model.metrics:
            metric.reset_state()
        for _ in tf.range(num_steps):
            # Steps are sequential by nature (each reads the weights the
            # previous one wrote): say so instead of relying on how the
            # loop orders stateful ops across overlapping iterations.
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)
            strategy.run(step_fn, args=(next(iterator),))
        return model.get_metrics_result()

    return train_steps


def _accuracy_function(model):
    @tf.function(reduce_retracing=True)
    def correct(images, labels):
        outputs = model(images, training=False)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]  # early-exit models: one output per exit
        hits = []
        for logits in outputs:
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            hits.append(tf.reduce_sum(tf.cast(
                tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)))
        return tf.stack(hits), tf.cast(tf.size(labels), tf.float32)

    return correct


def evaluate_widths(model, dataset, widths, per_output=False):
    """Top-1 accuracy of `model` on `dataset` at each width.

    Runs on this process only (no strategy), at the statistics `set_width`
    selects (calibrated ones when `calibrate_bn` ran). For a model with
    several outputs (an early-exit model) the accuracy is the last
    output's; with `per_output=True` each entry is the list of every
    output's accuracy.
    """
    correct_fn = _accuracy_function(model)
    accuracies = []
    for width in widths:
        model.set_width(width)
        hits, total = 0.0, 0.0
        for images, labels in dataset:
            batch_hits, batch_total = correct_fn(images, labels)
            hits = hits + batch_hits.numpy().astype("float64")
            total += float(batch_total)
        per = [float(h) / max(total, 1.0) for h in np.atleast_1d(hits)]
        accuracies.append(per if per_output else per[-1])
    model.set_width(model.reported_widths[0])  # the widest width
    return accuracies


def _checkpointed_state(model):
    """Variables a checkpoint must hold besides model and optimizer.

    Keras' `SeedGenerator`s (dropout, random augmentation layers) are not
    tracked by `tf.train.Checkpoint`; without their states a resumed run
    would draw different dropout masks than an uninterrupted one.
    """
    return [v for v in model.variables if v.name == "seed_generator_state"]


def _training_stream(config, train_ds, num_classes, start_step):
    """The endless batch stream, positioned at `start_step`.

    The pipeline is deterministic for a seed, so skipping the batches
    already trained on reproduces exactly what an uninterrupted run sees
    next (checkpointing the iterator instead would store a full shuffle
    buffer, e.g. all of CIFAR-10, in every checkpoint).
    """
    stream = train_ds
    if config.label_smoothing:
        stream = stream.map(
            lambda x, y: (x, tf.one_hot(y, num_classes)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    stream = stream.repeat()
    if start_step:
        stream = stream.skip(start_step)
    options = tf.data.Options()
    # Every worker reads the whole stream and keeps its share of each
    # global batch: sources are in-memory arrays or file lists, not shards.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return stream.with_options(options)


def _check_run_config(model_dir, config):
    """Refuses to resume a `model_dir` written by a different run."""
    path = os.path.join(model_dir, _RUN_CONFIG)
    if not tf.io.gfile.exists(path):
        return
    identity = config.identity()
    with tf.io.gfile.GFile(path) as f:
        saved = json.load(f).get("identity", {})
    diff = {
        key: (saved.get(key), identity.get(key))
        for key in sorted(set(saved) | set(identity))
        if saved.get(key) != identity.get(key)
    }
    if diff:
        lines = "\n".join(
            f"  {key}: was {old!r}, now {new!r}"
            for key, (old, new) in diff.items()
        )
        raise CheckpointError(
            f"--model_dir={model_dir} belongs to a different run:\n"
            f"{lines}\nResuming would mix the two. Use a new --model_dir, "
            "or delete this one to start over."
        )


def _write_run_config(model_dir, config):
    """Records the run's settings (once) for `_check_run_config`."""
    path = os.path.join(model_dir, _RUN_CONFIG)
    if tf.io.gfile.exists(path):
        return
    # Written then renamed: other workers may read it at the same time.
    files.write_json_atomic(path, {"identity": config.identity(),
                                   "config": dataclasses.asdict(config)})


def _restore(checkpoint, model_dir):
    """Restores the latest checkpoint of `model_dir`; returns its path.

    Any failure (unreadable file, missing or mis-shaped variable) raises
    `CheckpointError`: starting afresh would overwrite the run's state.
    """
    latest = tf.train.latest_checkpoint(model_dir)
    if latest is None:
        if tf.io.gfile.glob(os.path.join(model_dir, "ckpt-*")):
            raise CheckpointError(
                f"{model_dir} holds checkpoint files but no readable "
                "'checkpoint' index. Delete the directory to start over, or "
                "point --model_dir elsewhere."
            )
        return None
    try:
        status = checkpoint.restore(latest)
        status.assert_existing_objects_matched()
    except Exception as err:  # noqa: BLE001
        # Whatever the failure (a truncated file raises IndexError, a
        # mis-shaped variable ValueError, a missing one AssertionError),
        # the run cannot resume; never fall through to a fresh start.
        first_line = str(err).strip().splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"Cannot resume from checkpoint {latest}: "
            f"{type(err).__name__}: {first_line}\nThe checkpoint is corrupt "
            "or was written by a different model. Refusing to start over "
            "(that would overwrite it): delete the directory, or point "
            "--model_dir elsewhere."
        ) from err
    return latest


def _summary_name(name):
    # "accuracy_w0.25" -> "accuracy/w0.25": TensorBoard groups by prefix.
    return re.sub(r"_(w\d)", r"/\1", name)


# TensorBoard's scalar plugin reads summaries tagged with this metadata.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
)


def write_scalars(writer, step, values):
    """Writes `{name: float}` as TensorBoard scalars at `step`.

    `tf.summary.scalar` needs the `tensorboard` package installed even to
    write; the summary op it wraps, `tf.summary.write` with the scalar
    plugin's metadata, does not, and TensorBoard reads the result the same.
    """
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(
                _summary_name(name),
                tf.constant(value, tf.float32),
                metadata=_SCALAR_METADATA,
            )


def _print_report(report):
    rows = [("width", "channels", "val accuracy")]
    for entry in report["widths"]:
        rows.append((
            (entry.get("name") or width_lib.width_tag(entry["width"])
             if isinstance(entry["width"], dict)
             else f"{entry['width']:.4g}"),
            "-".join(str(c) for c in entry["channels"]),
            f"{entry['accuracy']:.4f}",
        ))
    sizes = [max(len(r[i]) for r in rows) for i in range(3)]
    print(
        f"\n{report['method']} / {report['model']} / {report['dataset']}, "
        f"{report['steps']} steps"
    )
    for row in rows:
        print("  ".join(cell.rjust(size) for cell, size in zip(row, sizes)))


def train(config, strategy=None):
    """Trains, checkpoints, calibrates and reports; resumes if it can.

    Args:
        config: A `TrainConfig`.
        strategy: The `tf.distribute.Strategy` (default: the current one).
            Model, optimizer and metrics are created in its scope.

    Returns:
        The report dict written to `model_dir/report.json` (on the chief;
        other workers return None).

    Raises:
        CheckpointError: if `model_dir` holds a checkpoint of another run or
            one that cannot be read.
        keras_slim.data.DataError: if the data cannot be used as it is
            (image files that cannot be decoded, named; a TFDS data set
            that is not prepared).
    """
    try:
        return _train(config, strategy)
    except tf.errors.InvalidArgumentError as err:
        # A folder image that passed `load`'s quick check but cannot be
        # decoded fails inside a step with no file name: find and name it.
        explained = data_lib.explain_decode_error(config.dataset, err)
        if explained is None:
            raise
        raise explained from err


def _train(config, strategy):
    strategy = strategy or tf.distribute.get_strategy()
    method = methods.get(config.method)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if isinstance(strategy, tf.distribute.TPUStrategy) and (
        method.uses_random_widths(config)
    ):
        raise ValueError(
            f"--method={config.method} draws random widths, which XLA (and "
            "so TPUs) cannot compile: channel counts would change at run "
            "time. Use a fixed-width method (plain, snet, awn)."
        )
    deploy.check_options(config.export, config.quantize)
    model_dir = config.resolved_model_dir()
    cli.check_output_dir(model_dir, "--model_dir")
    is_chief = distribute.is_chief(strategy)
    _check_run_config(model_dir, config)

    train_ds, val_ds, info = _load_data(
        config, augment=config.augment, drop_remainder=True)
    steps_per_epoch = info.num_train // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch_size={config.batch_size} is larger than the "
            f"{info.num_train} training examples of {config.dataset}."
        )
    total_steps = config.train_steps or config.epochs * steps_per_epoch

    stream = _training_stream(config, train_ds, info.num_classes, start_step=0)
    with strategy.scope():
        model = build_compiled_model(
            config, info, steps_per_epoch, total_steps)
    optimizer = model.optimizer
    # Methods that change the network between steps (RePr) keep their
    # state in the checkpoint too.
    controller = method.make_controller(
        config, model, steps_per_epoch,
        calibration_data=(calibration_data(config, CONTROLLER_BATCHES)
                          if method.controller_fn else None))
    extra_state = {} if controller is None else {"method": controller.state}
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, rng_states=_checkpointed_state(model),
        **extra_state,
    )
    restored = _restore(checkpoint, model_dir)
    if is_chief:
        # Only now: a run refused above must not stamp another's directory.
        _write_run_config(model_dir, config)
    start_step = int(optimizer.iterations.numpy())
    if restored:
        logging.info("Resumed from step %d (%s).", start_step, restored)
    if controller is not None:
        controller.update(start_step)  # checks the restored state's step
    if start_step >= total_steps:
        problems = deploy.check_outputs(model_dir, config.export,
                                        config.quantize)
        if not problems:
            logging.info("%s is a finished run and its outputs are intact; "
                         "nothing to do.", model_dir)
            if not is_chief:
                return None
            with tf.io.gfile.GFile(
                    os.path.join(model_dir, deploy.REPORT_FILE)) as f:
                return json.load(f)
        logging.warning(
            "%s holds the final checkpoint (step %d), but %s. Calibrating, "
            "evaluating and exporting again from that checkpoint.",
            model_dir, start_step, "; ".join(problems))
    write_dir = distribute.write_dir(model_dir, strategy)
    manager = tf.train.CheckpointManager(
        checkpoint, write_dir, max_to_keep=config.max_checkpoints
    )
    if is_chief:
        writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
    else:
        writer = tf.summary.create_noop_writer()

    if start_step:
        stream = _training_stream(
            config, train_ds, info.num_classes, start_step
        )
    iterator = iter(strategy.experimental_distribute_dataset(stream))
    train_steps = make_train_function(model, strategy, controller)
    progress = None
    every = max(1, config.checkpoint_every_steps or total_steps)
    steps_per_loop = max(1, config.steps_per_loop)
    step = start_step
    if step < total_steps:
        logging.info(
            "Training %s on %s: %d steps (%d per epoch), %d replica(s), "
            "model_dir=%s.", config.model, config.dataset, total_steps,
            steps_per_epoch, strategy.num_replicas_in_sync, model_dir,
        )
    first_call = True
    while step < total_steps:
        if first_call:
            # The first call traces and compiles the step (tens of seconds
            # on CPU): say so, or the run looks hung.
            logging.info("Tracing the training step (its first call "
                         "compiles it; this can take a minute)...")
            traced_at = time.perf_counter()
        # Stop at checkpoint steps, so that a resumed run lands on them too.
        num_steps = min(steps_per_loop, total_steps - step,
                        every - step % every)
        if controller is not None:
            # ... and at the method's events, which run between steps.
            event = controller.next_event_step(step)
            if event is not None:
                num_steps = min(num_steps, event - step)
        logs = train_steps(iterator, tf.constant(num_steps, tf.int32))
        step = int(optimizer.iterations.numpy())
        if first_call:
            logging.info("Traced; the first %d step(s) took %.1f s.",
                         num_steps, time.perf_counter() - traced_at)
            first_call = False
        if controller is not None:
            controller.update(step)
        logs = {name: float(value) for name, value in logs.items()}
        logs["learning_rate"] = float(optimizer.learning_rate.numpy())
        write_scalars(writer, step, logs)
        if progress is None:
            # Shows each loop's averages as they are, not averaged again.
            progress = keras.utils.Progbar(
                total_steps,
                verbose=config.verbose if is_chief else 0,
                stateful_metrics=list(logs),
                unit_name="step",
            )
        progress.update(step, list(logs.items()))
        if step % every == 0 or step >= total_steps:
            manager.save(checkpoint_number=step)
    if controller is not None:
        # A run that ends while filters are dropped brings them back.
        controller.finish(step)
    writer.flush()
    if not is_chief:
        shutil.rmtree(write_dir, ignore_errors=True)
        return None
    return _final_report(config, model, method, info, train_ds, val_ds,
                         model_dir, step, strategy)


def _load_data(config, **kwargs):
    """`keras_slim.data.load` of the run's data (its data flags), with the
    pipeline options `kwargs`."""
    return data_lib.load(
        config.dataset, batch_size=config.batch_size,
        data_dir=config.data_dir or None,
        validation_split=config.validation_split, seed=config.seed,
        skip_bad_images=config.skip_bad_images, download=config.download,
        **kwargs,
    )


# Batches of `calibration_data` a controller reads at its events (RePr:
# BN statistics measured, and drops compensated, on them).
CONTROLLER_BATCHES = 4


def calibration_data(config, num_batches):
    """The examples the final calibration and export read: fixed, seeded.

    The first `num_batches` batches of a training pipeline built only for
    this (no augmentation, the run's seed), cached: every width is
    calibrated on the same examples, and a run resumed after its last
    checkpoint (killed during calibration or export) calibrates and exports
    exactly as an uninterrupted one. Reading the training pipeline itself
    would not do that: its shuffle order depends on how many passes over
    it were started, which differs between the two.
    """
    dataset, _, _ = _load_data(config, augment=False, shuffle=True,
                               cache=False)
    return dataset.take(num_batches).cache()


def _final_report(config, model, method, info, train_ds, val_ds, model_dir,
                  step, strategy):
    """Calibrates BN at the report widths, evaluates, writes report.json."""
    del train_ds  # its shuffle order is not reproducible; see below
    widths = method.report_widths(config)
    num_batches = max(1, math.ceil(
        config.calibration_examples / config.batch_size
    ))
    calibration_ds = calibration_data(config, num_batches)
    # Nothing claims completeness while the outputs are rewritten.
    report_path = os.path.join(model_dir, deploy.REPORT_FILE)
    if tf.io.gfile.exists(report_path):
        tf.io.gfile.remove(report_path)
    # Exact statistics per width (a no-op for networks without BN).
    for i, width in enumerate(widths):
        logging.info("Calibrating BN statistics for width %s (%d/%d)...",
                     _width_name(width), i + 1, len(widths))
        keras_slim.calibrate_bn(model, calibration_ds, widths=[width],
                                verbose=0)
    logging.info("Evaluating %d width(s) on %d validation examples...",
                 len(widths), info.num_validation)
    accuracies = evaluate_widths(model, val_ds, widths, per_output=True)
    report = {
        "method": config.method,
        "model": config.model,
        "dataset": config.dataset,
        "steps": step,
        "num_replicas": strategy.num_replicas_in_sync,
        "num_validation": info.num_validation,
        "widths": [
            {
                # A searched configuration stays a dict layer -> channels.
                "width": width if isinstance(width, dict) else float(width),
                # ... and keeps its name (`--searched_config=FILE:NAME`).
                **({"name": width.name} if getattr(width, "name", None)
                   else {}),
                "channels": [int(c) for c in model.channels_for(width)],
                "accuracy": float(accuracy[-1]),
                # One accuracy per exit for early-exit models.
                **({"exit_accuracies": accuracy} if len(accuracy) > 1
                   else {}),
            }
            for width, accuracy in zip(widths, accuracies)
        ],
    }
    # What to deploy first, then the report: a run with a report.json has
    # written everything (see `deploy.check_outputs`).
    logging.info("Saving %s...", deploy.MODEL_FILE)
    model_path = deploy.write_model(model, model_dir)
    if config.export:
        representative = deploy.representative_images(calibration_ds)
        for fmt in config.export:
            folder = os.path.join(model_dir, fmt)
            if tf.io.gfile.exists(folder):
                # Files of an earlier attempt (other widths, another
                # --quantize) must not stay listed in the new manifest.
                tf.io.gfile.rmtree(folder)
            started = time.perf_counter()
            # One width per call (the manifest keeps the others' entries):
            # each conversion takes seconds, so say which one is running.
            for i, width in enumerate(widths):
                logging.info("Exporting and verifying %s for width %s "
                             "(%d/%d)...", fmt, _width_name(width), i + 1,
                             len(widths))
                deploy.export_widths(
                    model, model_dir, [fmt], [width], config.quantize,
                    representative_data=representative,
                )
            logging.info("Wrote %s/ in %.1f s.", folder,
                         time.perf_counter() - started)
    report["outputs"] = {
        deploy.MODEL_FILE: deploy.file_record(model_path),
        **{fmt: f"{fmt}/{deploy.MANIFEST_FILE}" for fmt in config.export},
    }
    report["load_model"] = deploy.LOAD_RECIPE.format(
        model_path if "://" in model_path else os.path.abspath(model_path))
    files.write_json_atomic(report_path, report)
    eval_writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
    write_scalars(eval_writer, step, {
        f"accuracy_{e.get('name') or width_lib.width_tag(e['width'])}":
            e["accuracy"]
        for e in report["widths"]
    })
    eval_writer.flush()
    if config.verbose:
        _print_report(report)
        # keras_slim's layers are found through the registry its import
        # fills; without it load_model fails.
        print(f"\nWrote {model_dir}. Load the model with:\n  "
              f"{report['load_model']}")
    return report


def _width_name(width):
    if isinstance(width, dict):
        return width_lib.width_tag(width)
    return f"{float(width):g}"
