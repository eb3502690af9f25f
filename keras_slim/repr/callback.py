"""`RePrCallback`: RePr for plain `model.fit`."""

import sys
import warnings

import keras

from keras_slim import compat
from keras_slim.repr import core as core_lib
from keras_slim.repr import schedule as schedule_lib
from keras_slim.repr.core import RePrController

UNITS = ("epochs", "steps")


class RePrCallback(keras.callbacks.Callback):
    """Trains any conv model with RePr under `model.fit`.

    Trains the full network for `s1`, drops the `drop_fraction` most
    redundant filters (ranked over all layers together), trains the
    sub-network for `s2`, brings the dropped filters back re-initialised
    orthogonally to the kept ones, and repeats `cycles` times; then the
    network trains normally until `fit` ends. The schedule starts with
    the first `fit` that runs this callback (also on a model trained
    before, e.g. to fine-tune it with RePr) and counts the optimizer's
    steps (`optimizer.iterations`), so a later `fit` with the same
    callback continues it.
    An event due after step `t` runs just before step `t + 1`; a
    re-initialisation due after the last step of `fit` runs when `fit`
    ends (a drop due then waits for the next `fit`). With
    `steps_per_execution > 1`, fit runs callbacks only between executions,
    so an event between two runs at the next one (a warning says how
    late; one inside a fit's last execution runs first in the next fit).
    A `fit` that ends while filters are out brings them back at its end
    (re-initialised, with a warning): run a whole drop window within one
    `fit`.

    A `fit` stopped by an exception (Ctrl-C, an error in another callback)
    does not run `on_train_end`: the model is left as the sub-network.
    The next training call on the model (`fit` or `train_on_batch`)
    without this callback then brings the filters back and removes RePr's
    hold first, with a warning; a `fit` with this callback continues the
    cycle; `callback.finish()` does it at once (e.g. before evaluating or
    exporting the interrupted model).

    During S2 the dropped filters are truly out: they carry no signal and
    get no update (their weights, BN parameters and statistics are
    written back after every optimizer step inside the traced train step,
    so gradients, momentum, Adam moments and weight decay cannot move
    them, also with `steps_per_execution > 1` and under `tf.distribute`).
    See `keras_slim.repr.core` for the details.

    The defaults differ from the paper where the paper's choices break
    networks it was not tried on (measured on ResNet-20, see the README):
    the ranking compares layers fairly (`normalization="chance"`), no
    layer loses more than half its filters (`max_drop_per_layer`), layers
    with more filters than fan-in are not ranked, a BN channel keeps its
    offset while dropped and comes back at its layer's scale
    (`bn_mode="preserve"`), and BN statistics are re-estimated after each
    event. `RePrCallback(..., **keras_slim.repr.PAPER)` runs the paper's
    exact method instead.

    When `fit` starts, the schedule is checked against the run (its
    length from `fit`'s epochs and steps, its learning rate from the
    optimizer's `LearningRateSchedule`): events after the end, too little
    training after the last re-initialisation, or events at a learning
    rate far below the run's peak are reported (`schedule_check`). A
    learning rate that callbacks set (`LearningRateScheduler`,
    `ReduceLROnPlateau`) is checked at each event instead, against the
    highest rate seen so far (a warning). The paper's schedule
    assumes a nearly constant learning rate (its code: 0.05, halved every
    25k steps) over 100 epochs; under a schedule that decays to zero, put
    the cycles early. On a BN ResNet, one early cycle is what measured
    well: ResNet-20 on CIFAR-10 with cosine decay, one cycle dropping at
    20% of the run and re-initialising at 30% matched standard training
    over 3 seeds, where two cycles cost about 4 points (see the README).

    To resume a run exactly, checkpoint `callback.attach(model)` (RePr's
    state: masks, held values, events done) with the model and optimizer.

    Args:
        s1: Full-network training before each drop (epochs or steps,
            integer >= 1; the paper: 20 epochs).
        s2: Sub-network training after each drop (integer >= 1; the
            paper: 10 epochs).
        cycles: Drop / re-initialise cycles (integer >= 1; the paper: 3).
        drop_fraction: Share of ranked filters dropped each cycle, in
            (0, 1).
        ranking: "orthogonality" (RePr), "l1" or "l2" (smallest filters
            first: the paper's ablation).
        cutoff: "global" (one cut-off over all layers, the paper) or
            "per_layer" (the same share of every layer).
        unit: "epochs" (needs the number of batches per epoch: from `fit`,
            or `steps_per_epoch`) or "steps".
        steps_per_epoch: Batches per epoch when `fit` cannot tell (e.g. a
            repeated dataset).
        exclude_first: Never drop the first convolution (the author's
            choice).
        layers: Optional names of the conv layers to rank and drop
            (default: every convolution).
        min_kept: Filters each layer keeps whatever the ranking.
        seed: Seed of the re-initialisation.
        verbose: 1 prints one line per drop / re-initialisation.
        normalization: "chance" (each filter's overlap in standard errors
            above that of random filters of its layer's fan-in) or
            "paper" (the paper's score, which ranks layers by fan-in).
        max_drop_per_layer: Largest share of one layer's filters dropped
            at once, in (0, 1), or None (the paper: no ceiling).
        skip_overcomplete: Do not rank layers with more filters than
            fan-in (they can never be orthogonal).
        bn_mode: "preserve" or "paper" (see `keras_slim.repr.core`).
        reestimate_bn: Re-estimate every BN's moving statistics from the
            steps after each event (see `StatisticsRestart`).
        schedule_check: "warn", "raise" or "off": what to do when the
            schedule does not suit the run (see above).
        min_lr_fraction: An event at a learning rate below this share of
            the run's peak is reported.
        min_tail_fraction: The last re-initialisation must leave this
            share of the run to train the new filters.
        calibration_data: Optional training inputs (array or dataset): a
            few batches on which the BN statistics are measured right at
            each event (without it they follow from the next steps), and
            drops compensated with `compensate_drop=True`.
        compensate_drop: At each drop, refit the layer after each dropped
            filter so the kept filters take over what they can predict of
            it (needs `calibration_data`; see `keras_slim.repr.compensate`).
            Off by default: more accuracy right after a drop, not at the
            end of training (README).

    Raises:
        ValueError: for `drop_fraction` outside (0, 1), `s1`, `s2` or
            `cycles` < 1, an unknown ranking, cut-off, unit, normalization,
            bn_mode or schedule_check; when training starts, for a model
            with no conv layer to rank, a layer whose filters cannot be
            masked, S1 or S2 shorter than `steps_per_execution`, or
            (with `schedule_check="raise"`) a schedule that does not suit
            the run.

    Example:

    >>> callback = keras_slim.repr.RePrCallback(
    ...     s1=20, s2=10, cycles=3, drop_fraction=0.3,
    ...     calibration_data=x_train[:512])
    >>> model.fit(train_ds, epochs=100, callbacks=[callback])
    >>> callback.controller.history[0]["filters"]   # filters dropped per layer
    >>> print(callback.controller.last_summary())  # per-layer drop counts
    >>> paper = keras_slim.repr.RePrCallback(20, 10, 3, 0.3,
    ...                                      **keras_slim.repr.PAPER)

    Reference:
        Prakash, Storer, Florencio & Zhang, RePr: Improved Training of
        Convolutional Filters, CVPR 2019 (https://arxiv.org/abs/1811.07275).
    """

    def __init__(
        self,
        s1,
        s2,
        cycles,
        drop_fraction,
        ranking="orthogonality",
        cutoff="global",
        unit="epochs",
        steps_per_epoch=None,
        exclude_first=True,
        layers=None,
        min_kept=1,
        seed=0,
        verbose=1,
        normalization="chance",
        max_drop_per_layer=0.5,
        skip_overcomplete=True,
        bn_mode="preserve",
        reestimate_bn=True,
        schedule_check="warn",
        min_lr_fraction=schedule_lib.MIN_LR_FRACTION,
        min_tail_fraction=schedule_lib.MIN_TAIL_FRACTION,
        calibration_data=None,
        compensate_drop=False,
    ):
        super().__init__()
        if unit not in UNITS:
            raise ValueError(
                f"`unit` must be 'epochs' or 'steps'; got {unit!r}."
            )
        schedule_lib.check_positive_int(
            s1, "S1", f"{unit} of full-network training before each drop")
        schedule_lib.check_positive_int(
            s2, "S2", f"{unit} of sub-network training after each drop")
        schedule_lib.check_positive_int(
            cycles, "cycles", "drop / re-initialise cycles")
        if steps_per_epoch is not None:
            if unit == "steps":
                raise ValueError(
                    "steps_per_epoch only converts epochs to steps; with "
                    "unit='steps' S1 and S2 are steps already. Leave it out "
                    "or use unit='epochs'.")
            steps_per_epoch = schedule_lib.check_positive_int(
                steps_per_epoch, "steps_per_epoch", "batches per epoch")
        self.s1, self.s2, self.cycles = s1, s2, cycles
        self.unit = unit
        self.steps_per_epoch = steps_per_epoch
        # Checked now (not when fit starts), kept for `RePrController`.
        self.controller_options = dict(
            core_lib.check_options(
                drop_fraction=drop_fraction, ranking=ranking, cutoff=cutoff,
                normalization=normalization,
                max_drop_per_layer=max_drop_per_layer,
                skip_overcomplete=skip_overcomplete, bn_mode=bn_mode,
                min_kept=min_kept),
            exclude_first=exclude_first, layers=layers, seed=seed,
            verbose=verbose, reestimate_bn=reestimate_bn,
            calibration_data=calibration_data,
            compensate_drop=compensate_drop)
        vars(self).update(self.controller_options)  # callback.drop_fraction
        self.schedule_check = schedule_lib.check_schedule_check(
            schedule_check)
        for value, name in ((min_lr_fraction, "min_lr_fraction"),
                            (min_tail_fraction, "min_tail_fraction")):
            if isinstance(value, bool) or not isinstance(
                    value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(
                    f"{name} must be a number in [0, 1); got {value!r}.")
        self.min_lr_fraction = float(min_lr_fraction)
        self.min_tail_fraction = float(min_tail_fraction)
        self.controller = None
        self._next_event = None
        self._checked = True
        self._installed = False  # RePr's hold is in the model's train step
        self._original_step = self._original_make = None
        self._events_at_start = 0
        self._peak_lr = 0.0
        self._anchored = False  # this fit set the schedule's start
        self._late_steps = 0  # how late fit may run an event
        self._carry_late = 0  # an event the last fit ended past
        self._warned_late = False

    # ------------------------------------------------------------ state
    def attach(self, model):
        """Creates RePr's state for `model` (once) and returns it.

        Call it before restoring a checkpoint that holds it; `fit` calls
        it itself.

        Returns:
            The `tf.Module` to put in a `tf.train.Checkpoint`.
        """
        if self.controller is None:
            self.controller = RePrController(
                model, **self.controller_options)
            # The schedule starts with the first fit (see the class doc).
            self.controller.track_schedule_start()
        elif self.controller.model is not model:
            raise ValueError(
                "This RePrCallback is attached to another model; use one "
                "callback per model."
            )
        return self.controller.state

    @property
    def state(self):
        """RePr's checkpointable state (after `attach` or `fit`)."""
        if self.controller is None:
            raise ValueError(
                "RePrCallback has no state yet: call `attach(model)`."
            )
        return self.controller.state

    def schedule(self, steps_per_epoch=None):
        """The `RePrSchedule` in optimizer steps, from the optimizer's
        step at the first `fit` with this callback (from 0 before it)."""
        start = 0
        if self.controller is not None:
            start = max(0, int(self.controller.schedule_start.numpy()))
        if self.unit == "steps":
            return schedule_lib.RePrSchedule(
                self.s1, self.s2, self.cycles, start)
        steps_per_epoch = self.steps_per_epoch or steps_per_epoch
        if not steps_per_epoch:
            raise ValueError(
                "RePrCallback(unit='epochs') needs the number of batches "
                "per epoch, which fit does not know for this data: pass "
                "`steps_per_epoch=` to the callback (or to fit), or use "
                "unit='steps'."
            )
        return schedule_lib.RePrSchedule.from_epochs(
            self.s1, self.s2, self.cycles, int(steps_per_epoch), start
        )

    # -------------------------------------------------------- callbacks
    def on_train_begin(self, logs=None):
        model = self.model
        if self._installed:  # an earlier fit of this callback was stopped
            self._restore_step()
        self.attach(model)
        step = self._step()
        anchor = self.controller.schedule_start
        self._anchored = int(anchor.numpy()) < 0
        if self._anchored:
            # The first fit with this callback starts the schedule (state
            # restored from a checkpoint made before the start was kept,
            # with events done: counted from step 0).
            done = int(self.controller.events_done.numpy())
            anchor.assign(step if done == 0 else 0)
        try:
            self._begin(model, step)
        except BaseException:
            # Refused (or failed) before training: nothing of this fit
            # stays, not even the schedule's start.
            if self._installed:
                self._restore_step()
            self._unanchor()
            raise

    def _begin(self, model, step):
        schedule = self.schedule(self.params.get("steps"))
        # fit runs callbacks only between executions (every
        # steps_per_execution steps from each epoch's start, and at each
        # epoch's end): an event between two runs at the next one.
        per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
        if min(schedule.s1, schedule.s2) < per_execution:
            raise ValueError(
                f"S1 and S2 ({schedule.s1} and {schedule.s2} steps) must be "
                f"at least steps_per_execution={per_execution}: fit runs "
                "callbacks only between executions, so a shorter window "
                "could pass between two of them (a drop and its "
                "re-initialisation at the same step)."
            )
        self._late_steps = per_execution - 1
        self._warned_late = False
        self.controller.schedule = schedule
        # The traced step holds the dropped filters after every update.
        self._original_step = model.__dict__.get("train_step")
        model.train_step = self.controller.wrap_train_step(model.train_step)
        model.make_train_function(force=True)
        self._original_make = model.__dict__.get("make_train_function")
        model.make_train_function = self._guard(model.make_train_function)
        self._installed = True
        self._start_step = step
        self._checked = False
        self._events_at_start = len(self.controller.history)
        self._note_learning_rate()
        self.controller.check_not_overdue(
            step, max(self._late_steps, self._carry_late))
        # Events due now run before the first step, once on_epoch_begin
        # has checked the run (a refused fit must not have dropped).
        self._next_event = step

    def _in_own_fit(self):
        """Whether a `fit` running this callback is on the call stack: the
        training call that builds a train function now belongs to it (its
        start, or a `train_on_batch` from one of its callbacks).

        Keras has no hook for a fit that an exception ends, so the guard
        asks the stack: a fit keeps its `CallbackList` in a local named
        `callbacks`.
        """
        frame = sys._getframe(1)
        while frame is not None:
            listed = frame.f_locals.get("callbacks")
            if isinstance(listed, keras.callbacks.CallbackList) and any(
                    callback is self for callback in listed.callbacks):
                return True
            frame = frame.f_back
        return False

    def _guard(self, make_train_function):
        """`make_train_function` that first undoes RePr when a training
        call outside this callback's fits finds its hold (a fit stopped by
        an exception skips `on_train_end`)."""

        def make(*args, **kwargs):
            original = make_train_function
            if self._installed and not self._in_own_fit():
                brought_back = self.controller.finish(self._step(),
                                                      warn=False)
                self._restore_step()
                warnings.warn(
                    "A fit with RePrCallback was stopped without ending "
                    "(an exception or Ctrl-C)"
                    + (", with RePr's dropped filters out: they are brought "
                       "back now, re-initialised" if brought_back else "")
                    + ", and RePr's hold is removed from the model's train "
                    "step before this training call. Pass the callback to "
                    "fit again to continue its schedule instead.",
                    stacklevel=2,
                )
                original = self.model.make_train_function
            return original(*args, **kwargs)

        return make

    def finish(self):
        """Ends RePr on the model now: brings dropped filters back
        (re-initialised) and removes RePr's hold from its train step.

        `fit` does this when it ends; call it after a `fit` that an
        exception stopped, before evaluating, saving or exporting the
        model. A later `fit` with this callback continues the schedule.

        Returns:
            The re-initialisation's record, or None when no filter was out.

        Example:

        >>> try:
        ...     model.fit(train_ds, epochs=100, callbacks=[callback])
        ... except KeyboardInterrupt:
        ...     callback.finish()
        """
        record = None
        if self.controller is not None and self.controller.schedule is not None:
            record = self.controller.finish(self._step())
        if self._installed:
            self._restore_step()
        return record

    def _note_learning_rate(self):
        rate = self._learning_rate()
        if rate is not None:
            self._peak_lr = max(self._peak_lr, rate)

    def _learning_rate(self):
        rate = compat.optimizer_learning_rate(
            getattr(self.model, "optimizer", None))
        if rate is None or schedule_lib.is_step_schedule(rate):
            return None  # a schedule is checked in advance (check_run)
        try:
            return schedule_lib.learning_rate_at(rate, self._step())
        except (TypeError, ValueError):
            return None

    def _run_events(self, step):
        performed = self.controller.update(
            step, max(self._late_steps, self._carry_late))
        self._carry_late = 0
        self._next_event = self.controller.next_event_step(step)
        late = [r for r in performed if r.get("late")]
        if late and not self._warned_late:
            self._warned_late = True
            record = late[0]
            warnings.warn(
                f"RePr's {record['event']} of cycle {record['cycle'] + 1} "
                f"ran after step {step}, {record['late']} step(s) after its "
                "schedule: fit runs callbacks only every "
                f"steps_per_execution={self._late_steps + 1} steps from "
                "each epoch's start, and at each epoch's end. For exact "
                "timing choose S1 and S2 (in steps) as multiples of "
                "steps_per_execution, and epochs whose length is one too.",
                stacklevel=2)
        if self.schedule_check == "off" or not performed:
            return
        rate = self._learning_rate()
        if rate is None or self._peak_lr <= 0:
            return
        for record in performed:
            if rate < self.min_lr_fraction * self._peak_lr:
                warnings.warn(
                    f"RePr's {record['event']} of cycle {record['cycle'] + 1}"
                    f" (after step {step}) runs at a learning rate of "
                    f"{rate:.3g}, {rate / self._peak_lr:.0%} of the highest "
                    f"seen in this run ({self._peak_lr:.3g}; set by a "
                    "callback or by you): filters dropped or re-initialised "
                    "then barely train. Put the cycles before the learning "
                    "rate comes down.",
                    stacklevel=2,
                )

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        # The first epoch of this fit is `initial_epoch`: only now is the
        # run's length known (`params` has fit's epochs and steps).
        if self._checked:
            return
        self._checked = True
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        if epochs and steps:  # else a dataset of unknown length
            total = self._start_step + (int(epochs) - int(epoch)) * int(steps)
            try:
                self.controller.check_run(
                    total, start_step=self._start_step,
                    action=self.schedule_check,
                    min_lr_fraction=self.min_lr_fraction,
                    min_tail_fraction=self.min_tail_fraction)
            except ValueError:
                self._restore_step()  # refused: leave the model as it was
                self._unanchor()
                raise
        start = int(self.controller.schedule_start.numpy())
        if self._anchored and epoch > 0 and start > 0:
            warnings.warn(
                f"This fit starts at epoch {epoch} (initial_epoch) and RePr's "
                f"schedule with it, at optimizer step {start}: if it resumes "
                "an interrupted RePr run, restore RePr's state with the "
                "model (`callback.attach(model)` in the checkpoint) before "
                "fit, or the cycles start over (and filters saved while "
                "dropped stay zero until the next re-initialisation).",
                stacklevel=2)

    def _unanchor(self):
        """Forgets the schedule's start set by a fit that was refused."""
        if self._anchored:
            self.controller.schedule_start.assign(-1)

    def on_train_batch_begin(self, batch, logs=None):
        # Events run before the first step that follows them, not after
        # the last step before them: the same step count, but validation
        # at an epoch's end then sees the network that epoch trained (not
        # one just dropped or re-initialised). A re-initialisation due
        # after the very last step of `fit` runs in `on_train_end`.
        if self._next_event is None:
            return
        step = self._step()
        if step >= self._next_event:
            self._run_events(step)

    def on_epoch_end(self, epoch, logs=None):
        self._note_learning_rate()

    def on_train_end(self, logs=None):
        # A fit that ends while filters are out (exactly at a
        # re-initialisation's step, or stopped early) must not return a
        # model with zeroed filters: bring them back now.
        step = self._step()
        self.controller.finish(step)
        self._restore_step()
        # A drop due inside the last execution (steps_per_execution > 1)
        # had no callback after it: the next fit runs it first.
        event = self.controller.overdue_event(step)
        if event is not None:
            self._carry_late = step - event.step
            warnings.warn(
                f"RePr's {event.kind} of cycle {event.cycle + 1}, due after "
                f"step {event.step}, fell inside this fit's last execution "
                f"(steps_per_execution={self._late_steps + 1}): the next "
                "fit with this callback runs it before its first step.",
                stacklevel=2)
        if len(self.controller.history) == self._events_at_start and not (
                self.params.get("epochs") and self.params.get("steps")):
            # The start's check needs the run's length; said here instead.
            upcoming = self.controller.next_event_step(step)
            if upcoming is not None:
                warnings.warn(
                    f"No RePr event ran in this fit: it ended after step "
                    f"{step}, the next event is due after step {upcoming}. "
                    "(fit could not tell the run's length beforehand: pass "
                    "steps_per_epoch to fit.)", stacklevel=2)

    def _restore_step(self):
        model = self.model
        if self._original_step is None:
            model.__dict__.pop("train_step", None)
        else:
            model.train_step = self._original_step
        if self._original_make is None:
            model.__dict__.pop("make_train_function", None)
        else:
            model.make_train_function = self._original_make
        self._installed = False
        # The next fit (without this callback) must not run the wrapper.
        model.train_function = None
