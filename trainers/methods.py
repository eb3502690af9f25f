"""Training methods: how each one builds and compiles its network.

A method is a registry entry, not a script. It says which widths the network
is built for (one full width, a fixed list or a continuous range), whether
its kernels are triangular (Any-Width Networks) and its BN private per width
(S-Net), and how `SlimmableModel.compile` is configured. Every method trains
with the same `SlimmableModel.train_step`, through `model.fit` or the custom
loop alike. A new method (early exits, RePr, ...) is one `register` call.

Example:

>>> method = get("us")
>>> model = method.build(config, input_shape=(8, 8, 1), num_classes=10)
>>> model.compile(optimizer, loss, metrics=["accuracy"],
...               **method.compile_kwargs(config))
"""

import dataclasses
import functools
import importlib
import json
from typing import Callable, Optional

import numpy as np

import keras_slim
from keras_slim.model import SlimmableModel

# How a method uses its widths.
FULL = "full"  # one width, 1.0: an ordinary network
LIST = "list"  # a fixed list; every listed width trains every step
RANGE = "range"  # any width of a range; sandwich rule with random widths


@dataclasses.dataclass(frozen=True)
class Method:
    """One way of training a network at many widths.

    Attributes:
        name: The `--method` value.
        description: One line for `--help`.
        widths_mode: `FULL`, `LIST` or `RANGE` (see above).
        triangular: Staircase kernel masks with one shared BN (AWN).
        switchable_bn: Private BN parameters and statistics per width.
        distillation: Whether `--inplace_distillation` applies (methods with
            a single width have no teacher).
        build_fn: Optional `build_fn(config, input_shape, num_classes) ->
            keras.Model` for methods whose network is not a zoo/custom model
            made slimmable (e.g. multi-exit networks); None uses
            `build_slimmable`.
        controller_fn: Optional `controller_fn(config, model,
            steps_per_epoch, calibration_data) -> controller` for methods
            that change the network between steps (RePr): the loop runs
            `controller.wrap_train_step(model.train_step)`, stops every run
            of steps at `controller.next_event_step(step)`, calls
            `controller.update(step)` after it and checkpoints
            `controller.state`.
    """

    name: str
    description: str
    widths_mode: str
    triangular: bool = False
    switchable_bn: bool = False
    distillation: bool = True
    build_fn: Optional[Callable] = None
    controller_fn: Optional[Callable] = None

    def searched_configs(self, config):
        """The configurations `--searched_config` names, or None."""
        spec = getattr(config, "searched_config", "")
        if not spec:
            return None
        path, _, names = spec.rpartition(":")
        names = [n.strip() for n in names.split(",") if n.strip()]
        if not path or not names:
            raise ValueError(
                "--searched_config must be FILE:NAME[,NAME...]; got "
                f"{spec!r}."
            )
        if self.widths_mode == RANGE or self.triangular:
            raise ValueError(
                f"--searched_config trains fixed configurations; "
                f"--method={self.name} does not (use plain for one "
                "configuration, snet for one or more)."
            )
        if self.widths_mode == FULL and len(names) != 1:
            raise ValueError(
                f"--method={self.name} trains one network; --searched_config "
                f"names {len(names)} ({names}). Use --method=snet to train "
                "them together."
            )
        from keras_slim import search

        found = search.load_configs(path)
        unknown = [n for n in names if n not in found]
        if unknown:
            raise ValueError(
                f"--searched_config: {unknown} not in '{path}', which has "
                f"{sorted(found)}."
            )
        return [found[n] for n in names]

    def slim_kwargs(self, config):
        """Arguments of `keras_slim.slim` / the zoo builders."""
        kwargs = {"triangular": self.triangular}
        searched = self.searched_configs(config)
        if searched is not None:
            # Channels of the search's supernet: its max width.
            kwargs["widths"] = searched
            kwargs["width_range"] = tuple(config.width_range)
            kwargs["switchable_bn"] = (
                self.switchable_bn and len(searched) > 1)
        elif self.widths_mode == FULL:
            kwargs["widths"] = [1.0]
        elif self.widths_mode == LIST:
            kwargs["widths"] = sorted(config.widths)
        else:
            kwargs["width_range"] = tuple(config.width_range)
        if self.widths_mode != RANGE and searched is None:
            # Always explicit: slim() would default to switchable BN for
            # any width list, AWN and the plain network share theirs.
            kwargs["switchable_bn"] = self.switchable_bn
        if config.sync_bn:
            kwargs["synchronized_bn"] = True
        return kwargs

    def compile_kwargs(self, config):
        """Keyword arguments of `SlimmableModel.compile` for this method."""
        return {
            "sandwich_size": config.sandwich_size,
            "inplace_distillation": (
                self.distillation and config.inplace_distillation
            ),
            "per_replica_widths": (
                self.widths_mode == RANGE and config.per_replica_widths
            ),
            "width_seed": config.seed,
        }

    def report_widths(self, config):
        """Widths evaluated (after BN calibration) in the final report."""
        searched = self.searched_configs(config)
        if searched is not None:
            return searched
        if config.report_widths:
            return sorted(float(w) for w in config.report_widths)
        if self.widths_mode == FULL:
            return [1.0]
        if self.widths_mode == LIST:
            return sorted(config.widths)
        low, high = config.width_range
        return [float(w) for w in np.linspace(low, high, 4).round(4)]

    def uses_random_widths(self, config):
        """Whether training draws random widths (dynamic shapes, no XLA)."""
        return self.widths_mode == RANGE and config.sandwich_size > 2

    def make_controller(self, config, model, steps_per_epoch,
                        calibration_data=None):
        """The method's between-steps controller for `model`, or None.

        `calibration_data`: a few fixed batches of training examples the
        controller may read at its events.
        """
        if self.controller_fn is None:
            return None
        return self.controller_fn(config, model, steps_per_epoch,
                                  calibration_data)

    def build(self, config, input_shape, num_classes):
        """Builds the network this method trains (not compiled)."""
        build_fn = self.build_fn or build_slimmable
        return build_fn(
            config, input_shape, num_classes, self.slim_kwargs(config)
        )


REGISTRY = {}


def register(method):
    """Adds a `Method` to the registry (its name becomes a `--method`)."""
    if method.name in REGISTRY:
        raise ValueError(f"Method {method.name!r} is already registered.")
    if method.widths_mode not in (FULL, LIST, RANGE):
        raise ValueError(
            f"Method {method.name!r}: widths_mode must be {FULL!r}, "
            f"{LIST!r} or {RANGE!r}; got {method.widths_mode!r}."
        )
    REGISTRY[method.name] = method
    return method


def get(name):
    """Returns the registered `Method` called `name`."""
    if name not in REGISTRY:
        raise ValueError(
            f"Unknown method {name!r}. Known methods: "
            f"{', '.join(sorted(REGISTRY))}."
        )
    return REGISTRY[name]


register(Method(
    "plain",
    "an ordinary network at width 1.0 (the baseline)",
    FULL,
    distillation=False,
))
register(Method(
    "us",
    "Universally Slimmable Network: sandwich rule over --width_range, "
    "inplace distillation, BN calibrated after training",
    RANGE,
))
register(Method(
    "snet",
    "Slimmable Network: every width of --widths each step, private "
    "(switchable) BN per width",
    LIST,
    switchable_bn=True,
))
register(Method(
    "awn",
    "Any-Width Network: triangular kernels, one shared BN, every width of "
    "--widths each step",
    LIST,
    triangular=True,
))
register(Method(
    "awn_rs",
    "Any-Width Network with random sampling: triangular kernels, sandwich "
    "rule over --width_range",
    RANGE,
    triangular=True,
))


def build_early_exit(config, input_shape, num_classes, slim_kwargs,
                     boosted=True):
    """Builds `config.model` as a `keras_slim.EarlyExitModel`.

    `config.model` is an early-exit zoo model (`resnet_exits`) or
    `package.module:function` returning an `EarlyExitModel`. `boosted=False`
    (`--method=exits_plain`) builds it with ensemble weight 0: plain joint
    training of every exit, the MSDNet baseline, through the same step.
    """
    kwargs = dict(slim_kwargs)
    if not boosted and ":" not in config.model:
        # A module:function builder chooses its own weight (checked below).
        kwargs["ensemble_weight"] = 0.0
    model = build_slimmable(config, input_shape, num_classes, kwargs,
                            expect=keras_slim.EarlyExitModel)
    method = "boost" if boosted else "exits_plain"
    if model.boosted != boosted:
        raise ValueError(
            f"--method={method} needs "
            + ("an ensemble weight > 0 (e.g. --model_kwargs="
               "'{\"ensemble_weight\": 0.5}'); with 0 use "
               "--method=exits_plain." if boosted else
               "ensemble weight 0; drop ensemble_weight from --model_kwargs "
               "or use --method=boost.")
        )
    return model

register(Method(
    "boost",
    "BoostNet: every exit of an early-exit --model (e.g. resnet_exits) "
    "learns what the ensemble of the exits before it gets wrong",
    FULL,
    distillation=False,
    build_fn=functools.partial(build_early_exit, boosted=True),
))
register(Method(
    "exits_plain",
    "plain joint training of every exit of an early-exit --model (MSDNet; "
    "the boosting baseline)",
    FULL,
    distillation=False,
    build_fn=functools.partial(build_early_exit, boosted=False),
))
register(Method(
    "boost_us",
    "width x depth: a slimmable early-exit --model, sandwich rule over "
    "--width_range, every width's exits boosted",
    RANGE,
    build_fn=functools.partial(build_early_exit, boosted=True),
))


def repr_controller(config, model, steps_per_epoch, calibration_data=None):
    """RePr's controller from the `--repr_*` flags (schedule in epochs).

    The schedule is checked against the run (its steps and the
    optimizer's learning-rate schedule): problems are warned about.
    `calibration_data` (the run's fixed calibration batches) measures BN
    statistics at each event and, with `--repr_compensate_drop`,
    compensates drops.
    """
    from keras_slim import repr as repr_lib

    if config.repr_paper and config.repr_compensate_drop:
        raise ValueError(
            "--repr_compensate_drop is not part of the paper's method "
            "(--repr_paper turns it off); pass one of the two.")
    options = (repr_lib.PAPER if config.repr_paper
               else {"compensate_drop": config.repr_compensate_drop})
    controller = repr_lib.RePrController(
        model,
        repr_lib.RePrSchedule.from_epochs(
            config.repr_s1, config.repr_s2, config.repr_cycles,
            steps_per_epoch,
        ),
        drop_fraction=config.repr_drop_fraction,
        ranking=config.repr_ranking,
        cutoff=config.repr_cutoff,
        seed=config.seed,
        verbose=config.verbose,
        # The paper's method re-estimates nothing: no batches to read.
        calibration_data=None if config.repr_paper else calibration_data,
        **options,
    )
    total_steps = config.train_steps or config.epochs * steps_per_epoch
    controller.check_run(total_steps)
    return controller


register(Method(
    "repr",
    "RePr: an ordinary network at width 1.0; every --repr_s1 + --repr_s2 "
    "epochs the --repr_drop_fraction most redundant filters are dropped "
    "for --repr_s2 epochs, then re-initialised orthogonally "
    "(--repr_cycles times)",
    FULL,
    distillation=False,
    controller_fn=repr_controller,
))


def _load_builder(spec):
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"--model={spec!r}: cannot import {attr!r} from module "
            f"{module_name!r} ({err})."
        ) from err


def parse_model_kwargs(text):
    """Parses `--model_kwargs` (a JSON object) into a dict."""
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--model_kwargs must be a JSON object such as "
            f"'{{\"padding\": \"same\"}}'; got {text!r} ({err})."
        ) from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--model_kwargs must be a JSON object; got {text!r}.")
    return kwargs


def build_slimmable(config, input_shape, num_classes, slim_kwargs,
                    expect=SlimmableModel):
    """Builds `config.model` as a `SlimmableModel`.

    `config.model` is a zoo name (`keras_slim.models.get`, which makes the
    network slimmable itself) or `package.module:function`, a function
    `(input_shape=, num_classes=, **model_kwargs)` returning a stock Keras
    model that is then converted with `keras_slim.slim` (or a
    `SlimmableModel`, used as is).
    """
    model_kwargs = config.resolved_model_kwargs()
    if ":" in config.model:
        model = _load_builder(config.model)(
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            **model_kwargs,
        )
        if not isinstance(model, SlimmableModel):
            model = keras_slim.slim(model, **slim_kwargs)
    else:
        from keras_slim import models  # the zoo imports every builder

        # --model_kwargs may override the method's slim arguments (e.g. a
        # divisor, or an AWN network evaluated over a range).
        model = models.get(
            config.model,
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            **{**slim_kwargs, **model_kwargs},
        )
    if not isinstance(model, expect):
        hint = (
            " Early-exit methods need an early-exit model: "
            "--model=resnet_exits, or package.module:function returning a "
            "keras_slim.EarlyExitModel."
            if expect is not SlimmableModel else ""
        )
        raise ValueError(
            f"--model={config.model!r} built a {type(model).__name__}, not a "
            f"keras_slim.{expect.__name__}.{hint}"
        )
    return model
