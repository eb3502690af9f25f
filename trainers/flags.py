"""Every command-line flag of the trainers, defined in one place.

All flags are optional: the defaults train a US-Net LeNet-3C1L on the
embedded digits data set, offline, on one device. Defaults come from
`trainers.loop.TrainConfig`, so the library and the command line agree.

Example:

>>> from absl import flags
>>> define_flags()
>>> flags.FLAGS(["train", "--method=snet", "--epochs=3"])
>>> config = config_from_flags(flags.FLAGS)
"""

import dataclasses

from absl import flags

from . import cli
from . import deploy
from . import distribute
from . import loop
from . import methods

_DEFAULTS = loop.TrainConfig()


def _floats(values):
    return ",".join(f"{v:g}" for v in values)


def define_flags():
    """Defines the trainers' flags (idempotent: a second call does nothing)."""
    if "method" in flags.FLAGS:
        return
    method_help = "; ".join(
        f"{name}: {m.description}" for name, m in sorted(
            methods.REGISTRY.items()
        )
    )
    # What to train.
    flags.DEFINE_enum(
        "method", _DEFAULTS.method, sorted(methods.REGISTRY),
        f"Training method. {method_help}.",
    )
    flags.DEFINE_string(
        "model", _DEFAULTS.model,
        "Zoo model (lenet_3c1l, mobilenet_v2, resnet20, resnet56) or "
        "'package.module:function' returning a Keras model for "
        "(input_shape=, num_classes=, **model_kwargs), made slimmable with "
        "keras_slim.slim.",
    )
    flags.DEFINE_string(
        "model_kwargs", _DEFAULTS.model_kwargs,
        "JSON object of extra model arguments, e.g. "
        "'{\"n\": 16, \"expand_sqrt2\": true}'. Empty: the model's trainer "
        "default ({\"padding\": \"same\"} for lenet_3c1l so that it fits "
        "8x8 digits, {} otherwise).",
    )
    flags.DEFINE_string(
        "dataset", _DEFAULTS.dataset,
        "'digits' (embedded, offline), 'tfds:NAME' (TensorFlow Datasets, "
        "prepared in --data_dir) or 'folder:PATH' (one sub-folder of images "
        "per class).",
    )
    flags.DEFINE_string(
        "data_dir", _DEFAULTS.data_dir,
        "TensorFlow Datasets directory for 'tfds:' datasets (default: "
        "TFDS' own, ~/tensorflow_datasets).",
    )
    flags.DEFINE_boolean(
        "skip_bad_images", _DEFAULTS.skip_bad_images,
        "For 'folder:' datasets: leave out, with a warning naming them, "
        "image files that cannot be decoded (every file is decoded once to "
        "find them) instead of stopping with an error that names them.",
    )
    flags.DEFINE_boolean(
        "download", _DEFAULTS.download,
        "For 'tfds:' datasets: download and prepare the data set if it is "
        "not prepared in --data_dir yet (needs a network). Without it a "
        "data set that is not prepared is an error saying how to prepare "
        "it.",
    )
    flags.DEFINE_float(
        "validation_split", _DEFAULTS.validation_split,
        "Fraction held out for validation when the dataset has no test "
        "split (folders, some TFDS sets).",
    )
    flags.DEFINE_boolean(
        "augment", _DEFAULTS.augment,
        "CIFAR-style augmentation: pad, random crop, random horizontal flip.",
    )

    # Widths.
    flags.DEFINE_list(
        "widths", _floats(_DEFAULTS.widths),
        "Fixed width list for snet and awn (every width trains each step).",
    )
    flags.DEFINE_list(
        "width_range", _floats(_DEFAULTS.width_range),
        "min,max width for us and awn_rs (sandwich rule).",
    )
    flags.DEFINE_list(
        "report_widths", _floats(_DEFAULTS.report_widths),
        "Widths calibrated and evaluated in the final report. Empty: the "
        "--widths list, or 4 evenly spaced widths of --width_range.",
    )
    flags.DEFINE_integer(
        "sandwich_size", _DEFAULTS.sandwich_size,
        "Widths per step of the sandwich rule: max, min and "
        "sandwich_size - 2 random widths.",
    )
    flags.DEFINE_boolean(
        "inplace_distillation", _DEFAULTS.inplace_distillation,
        "Narrower widths learn from the widest width's predictions instead "
        "of the labels.",
    )
    flags.DEFINE_boolean(
        "per_replica_widths", _DEFAULTS.per_replica_widths,
        "Under a distribution strategy, each replica draws its own random "
        "sandwich widths.",
    )

    # Schedule and optimisation.
    flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Training epochs.")
    flags.DEFINE_integer(
        "train_steps", _DEFAULTS.train_steps,
        "Total training steps; 0 means --epochs full epochs.",
    )
    flags.DEFINE_integer(
        "batch_size", _DEFAULTS.batch_size,
        "Global batch size, split across all replicas.",
    )
    flags.DEFINE_enum(
        "optimizer", _DEFAULTS.optimizer, list(loop.OPTIMIZERS),
        "sgd (with --momentum and --nesterov) or adam.",
    )
    flags.DEFINE_float(
        "learning_rate", _DEFAULTS.learning_rate,
        "Peak learning rate (after warmup).",
    )
    flags.DEFINE_float("momentum", _DEFAULTS.momentum, "SGD momentum.")
    flags.DEFINE_boolean(
        "nesterov", _DEFAULTS.nesterov, "Nesterov momentum for SGD."
    )
    flags.DEFINE_enum(
        "lr_schedule", _DEFAULTS.lr_schedule, list(loop.LR_SCHEDULES),
        "Decay after the warmup: cosine to 0, linear to 0, step (see "
        "--lr_step_boundaries) or constant.",
    )
    flags.DEFINE_float(
        "warmup_epochs", _DEFAULTS.warmup_epochs,
        "Epochs of linear learning-rate warmup (fractions allowed).",
    )
    flags.DEFINE_list(
        "lr_step_boundaries", _floats(_DEFAULTS.lr_step_boundaries),
        "For --lr_schedule=step: fractions of the post-warmup steps at "
        "which the rate is multiplied by --lr_step_factor.",
    )
    flags.DEFINE_float(
        "lr_step_factor", _DEFAULTS.lr_step_factor,
        "Multiplier at each --lr_step_boundaries boundary.",
    )
    flags.DEFINE_float(
        "weight_decay", _DEFAULTS.weight_decay,
        "Decoupled weight decay (each step multiplies a weight by "
        "1 - learning_rate * weight_decay); never applied to BN gamma/beta "
        "or biases. 0 disables it.",
    )
    flags.DEFINE_float(
        "label_smoothing", _DEFAULTS.label_smoothing,
        "Label smoothing of the cross-entropy on the labels.",
    )

    # RePr (--method=repr).
    flags.DEFINE_integer(
        "repr_s1", _DEFAULTS.repr_s1,
        "RePr: epochs of full-network training before each drop (the "
        "paper's S1).",
    )
    flags.DEFINE_integer(
        "repr_s2", _DEFAULTS.repr_s2,
        "RePr: epochs the sub-network trains with the dropped filters out "
        "(the paper's S2).",
    )
    flags.DEFINE_integer(
        "repr_cycles", _DEFAULTS.repr_cycles,
        "RePr: drop / re-initialise cycles; training continues normally "
        "after them.",
    )
    flags.DEFINE_float(
        "repr_drop_fraction", _DEFAULTS.repr_drop_fraction,
        "RePr: share of all ranked filters dropped each cycle (one global "
        "cut-off), in (0, 1).",
    )
    flags.DEFINE_enum(
        "repr_ranking", _DEFAULTS.repr_ranking,
        ["orthogonality", "l1", "l2"],
        "RePr: filter ranking; orthogonality (the paper) or l1/l2 norm "
        "(smallest dropped first, the paper's ablation).",
    )
    flags.DEFINE_enum(
        "repr_cutoff", _DEFAULTS.repr_cutoff, ["global", "per_layer"],
        "RePr: one cut-off over the filters of all layers (global, the "
        "paper) or the same share dropped from every layer (per_layer).",
    )
    flags.DEFINE_boolean(
        "repr_compensate_drop", _DEFAULTS.repr_compensate_drop,
        "RePr: at each drop, refit the layer after each dropped filter on "
        "the run's calibration batches so the kept filters take over what "
        "they can predict of it (keras_slim.repr.compensate; opt-in).",
    )
    flags.DEFINE_boolean(
        "repr_paper", _DEFAULTS.repr_paper,
        "RePr exactly as in the paper (its score, no per-layer ceiling, "
        "every conv ranked, BN zeroed and reset to the initializers) "
        "instead of the library's defaults (keras_slim.repr.PAPER).",
    )

    # Distribution.
    flags.DEFINE_enum(
        "strategy", "default", list(distribute.STRATEGIES),
        "tf.distribute strategy: default (one device), mirrored (all local "
        "GPUs, or the logical CPUs of --num_cpu_devices), multi_worker "
        "(MultiWorkerMirroredStrategy, cluster from TF_CONFIG) or tpu.",
    )
    flags.DEFINE_integer(
        "num_cpu_devices", 0,
        "Split the CPU into this many logical devices (testing "
        "--strategy=mirrored without accelerators); 0 leaves it alone.",
    )
    flags.DEFINE_string(
        "tpu", "", "TPU name or grpc:// address for --strategy=tpu."
    )
    flags.DEFINE_float(
        "heartbeat_timeout", 0.0,
        "--strategy=multi_worker: seconds a worker may stay silent before "
        "the cluster declares it dead and aborts (0 keeps TensorFlow's "
        "10 s; raise it on machines where workers share loaded CPUs).",
        lower_bound=0.0,
    )
    flags.DEFINE_boolean(
        "sync_bn", _DEFAULTS.sync_bn,
        "Synchronized BatchNormalization: batch statistics over the global "
        "batch instead of each replica's share.",
    )

    # Run management.
    flags.DEFINE_string(
        "model_dir", _DEFAULTS.model_dir,
        "Checkpoints, TensorBoard summaries (train/, eval/) and report.json. "
        "Re-running the same command resumes from the latest checkpoint. "
        "Empty: <tmp>/keras_slim/<method>-<model>-<dataset>.",
    )
    cli.validate_output_dir("model_dir")
    flags.DEFINE_integer(
        "seed", _DEFAULTS.seed,
        "Seed of weights, data order, augmentation and random widths.",
    )
    flags.DEFINE_boolean(
        "deterministic", _DEFAULTS.deterministic,
        "Deterministic TensorFlow ops (tf.config.experimental."
        "enable_op_determinism): bit-identical reruns, somewhat slower.",
    )
    flags.DEFINE_integer(
        "steps_per_loop", _DEFAULTS.steps_per_loop,
        "Training steps per tf.function call; also the summary interval.",
    )
    flags.DEFINE_integer(
        "checkpoint_every_steps", _DEFAULTS.checkpoint_every_steps,
        "Checkpoint interval in steps (a checkpoint is always written at "
        "the end); 0: only at the end.",
    )
    flags.DEFINE_integer(
        "max_checkpoints", _DEFAULTS.max_checkpoints,
        "Checkpoints kept in --model_dir.",
    )
    flags.DEFINE_integer(
        "calibration_examples", _DEFAULTS.calibration_examples,
        "Training examples per width for the final BN calibration.",
    )
    flags.DEFINE_string(
        "searched_config", _DEFAULTS.searched_config,
        "FILE:NAME[,NAME...]: train configurations found by "
        "keras_slim.search.autoslim (FILE its output JSON) from scratch. "
        "One name with --method=plain trains that network; one or more "
        "with --method=snet train them together as one S-Net whose widths "
        "are the configurations (private BN each). --width_range must "
        "have the max width the search's supernet had.",
    )
    flags.DEFINE_list(
        "export", list(_DEFAULTS.export),
        "At the end, also write one verified file per report width and a "
        "manifest.json into --model_dir/<format>/: tflite, onnx (comma-"
        "separated; model.keras is always written).",
    )
    flags.DEFINE_enum(
        "quantize", _DEFAULTS.quantize, list(deploy.QUANTIZATIONS),
        "Quantization of the exported TFLite files: float16, dynamic "
        "(int8 weights) or int8 (calibrated on training images); empty: "
        "float32.",
    )
    flags.DEFINE_integer(
        "verbose", _DEFAULTS.verbose, "0: quiet; 1: progress bar and report."
    )


def config_from_flags(flag_values):
    """A `loop.TrainConfig` from parsed flags (numbers parsed, lists cast)."""
    values = {}
    lists = ("widths", "width_range", "report_widths", "lr_step_boundaries")
    for field in dataclasses.fields(loop.TrainConfig):
        value = flag_values[field.name].value
        if field.name in lists:
            try:
                value = tuple(float(v) for v in value)
            except ValueError:
                raise flags.ValidationError(
                    f"--{field.name} must be a comma-separated list of "
                    f"numbers; got {','.join(value)!r}."
                ) from None
        if field.name == "export":
            value = tuple(v.strip().lower() for v in value if v.strip())
        values[field.name] = value
    if len(values["width_range"]) != 2:
        raise flags.ValidationError(
            "--width_range must be two numbers, min,max; got "
            f"{values['width_range']}."
        )
    return loop.TrainConfig(**values)
