"""RePr's schedule: S1 steps of the full network, S2 of the sub-network,
`cycles` times, then ordinary training to the end."""

import dataclasses
import numbers

import numpy as np

DROP = "drop"
REINIT = "reinit"


def check_positive_int(value, name, what):
    if isinstance(value, bool) or not isinstance(
            value, numbers.Integral) or value < 1:
        raise ValueError(
            f"{name} must be an integer >= 1 ({what}); got {value!r}."
        )
    return int(value)


@dataclasses.dataclass(frozen=True)
class Event:
    """One scheduled RePr event: after `step` optimizer steps, `kind`
    (`"drop"` or `"reinit"`) of cycle `cycle` (0-based)."""

    step: int
    kind: str
    cycle: int


@dataclasses.dataclass(frozen=True)
class RePrSchedule:
    """When RePr drops and re-initialises filters, in optimizer steps.

    Cycle `c` (0-based) trains the full network over steps
    `start + [c * (s1 + s2), c * (s1 + s2) + s1)`, drops filters once that
    many steps are done, trains the sub-network for `s2` steps and then
    brings the dropped filters back, re-initialised. After `cycles` cycles
    the network trains normally until the end.

    Args:
        s1: Steps of full-network training before each drop (>= 1).
        s2: Steps of sub-network training after each drop (>= 1).
        cycles: How many drop / re-initialise cycles (>= 1).
        start: Optimizer steps done before the first cycle starts (e.g.
            the training of a model RePr is added to later; >= 0).

    Example:

    >>> schedule = RePrSchedule(s1=20 * 703, s2=10 * 703, cycles=3)
    >>> [(e.step, e.kind) for e in schedule.events][:2]
    [(14060, 'drop'), (21090, 'reinit')]
    """

    s1: int
    s2: int
    cycles: int
    start: int = 0

    def __post_init__(self):
        if isinstance(self.start, bool) or not isinstance(
                self.start, numbers.Integral) or self.start < 0:
            raise ValueError(
                "start must be an integer >= 0 (optimizer steps done before "
                f"the first cycle); got {self.start!r}."
            )
        check_positive_int(self.s1, "S1", "steps of full-network training "
                           "before each drop")
        check_positive_int(self.s2, "S2", "steps of sub-network training "
                           "after each drop")
        check_positive_int(self.cycles, "cycles", "drop / re-initialise "
                           "cycles")

    @property
    def events(self):
        """Every `Event`, in order: drop, reinit, drop, reinit, ..."""
        result = []
        for cycle in range(self.cycles):
            start = self.start + cycle * (self.s1 + self.s2)
            result.append(Event(start + self.s1, DROP, cycle))
            result.append(Event(start + self.s1 + self.s2, REINIT, cycle))
        return result

    @property
    def drop_windows(self):
        """`[(first_step, end_step), ...]`: steps trained as a sub-network
        (half-open ranges of step counts)."""
        events = self.events
        return [(events[i].step, events[i + 1].step)
                for i in range(0, len(events), 2)]

    @property
    def total_steps(self):
        """Optimizer steps until the last re-initialisation (counting the
        `start` steps before the first cycle)."""
        return self.start + self.cycles * (self.s1 + self.s2)

    def events_due(self, step):
        """How many events have happened once `step` steps are done."""
        return sum(1 for event in self.events if event.step <= step)

    def next_event_step(self, step):
        """The first event step after `step`, or None after the last."""
        for event in self.events:
            if event.step > step:
                return event.step
        return None

    def in_sub_network(self, step):
        """Whether the step after `step` completed steps trains the
        sub-network (the dropped filters are out)."""
        return self.events_due(step) % 2 == 1

    @classmethod
    def from_epochs(cls, s1, s2, cycles, steps_per_epoch, start=0):
        """A schedule given in epochs (the paper's S1 = 20, S2 = 10);
        `start` is in optimizer steps."""
        check_positive_int(s1, "S1", "epochs of full-network training")
        check_positive_int(s2, "S2", "epochs of sub-network training")
        check_positive_int(
            steps_per_epoch, "steps_per_epoch", "batches per epoch"
        )
        return cls(s1 * steps_per_epoch, s2 * steps_per_epoch, cycles,
                   start)


# ------------------------------------------------------ run checks
SCHEDULE_CHECKS = ("warn", "raise", "off")

# Defaults of `check_run`: an event is suspicious below this share of the
# run's peak learning rate, and the last re-initialisation needs at least
# this share of the run after it. The paper's own schedule (constant
# learning rate halved every 25k steps, 100 epochs, last re-init after 90)
# passes both: 25% of the peak at its last events, 10% of the run left.
MIN_LR_FRACTION = 0.2
MIN_TAIL_FRACTION = 0.1


def check_schedule_check(value):
    if value not in SCHEDULE_CHECKS:
        raise ValueError(
            f"Unknown schedule_check {value!r}; expected 'warn' (the "
            "default), 'raise' or 'off'."
        )
    return value


def learning_rate_at(learning_rate, step):
    """The learning rate after `step` steps, as a float, or None.

    `learning_rate` is what a Keras optimizer holds
    (`keras_slim.compat.optimizer_learning_rate`): a number, a
    `keras.optimizers.schedules.LearningRateSchedule` (a function of the
    step), a variable (a constant that callbacks may change: its current
    value) or a callable of no argument (Keras calls it at every step:
    its current value).
    """
    import keras

    if learning_rate is None:
        return None
    if isinstance(learning_rate, (int, float)):
        return float(learning_rate)
    if is_step_schedule(learning_rate):
        value = learning_rate(step)
    elif callable(learning_rate) and not hasattr(learning_rate, "assign"):
        value = learning_rate()
    else:
        value = learning_rate
    return float(keras.ops.convert_to_numpy(value))


def is_step_schedule(learning_rate):
    """Whether `learning_rate` is a function of the step that the whole
    run's rates can be read from in advance (a `LearningRateSchedule`)."""
    import keras

    return isinstance(learning_rate,
                      keras.optimizers.schedules.LearningRateSchedule)


def check_run(schedule, total_steps, learning_rate=None, start_step=0,
              min_lr_fraction=MIN_LR_FRACTION,
              min_tail_fraction=MIN_TAIL_FRACTION):
    """What is wrong with running `schedule` in a run of `total_steps`.

    RePr only helps when the re-initialised filters can still learn: the
    paper's schedule (S1 = 20, S2 = 10 epochs, 3 cycles, 100 epochs) keeps
    a nearly constant learning rate (its code halves it every 25k steps,
    about 36 epochs) and leaves 10 ordinary epochs after the last
    re-initialisation. The same numbers under a schedule that decays to
    zero put the last events at a learning rate too small to repair them.

    Args:
        schedule: A `RePrSchedule` (optimizer steps).
        total_steps: Optimizer steps at which the run ends.
        learning_rate: The optimizer's learning rate (number, schedule,
            variable or callable), or None to skip the learning-rate
            check; only a `LearningRateSchedule` is checked (the others
            do not say what the rate will be at the events).
        start_step: Optimizer steps done when the run starts (events
            before it are past).
        min_lr_fraction: An event at a learning rate below this share of
            the run's peak is reported.
        min_tail_fraction: The last re-initialisation must leave at least
            this share of the run's steps (and at least one step) to train
            the new filters.

    Returns:
        A list of messages (empty when the schedule fits the run).

    Example:

    >>> check_run(RePrSchedule(20, 10, 3), total_steps=90)
    ['RePr\\'s last re-initialisation is due after step 90, ...']
    """
    total_steps, start_step = int(total_steps), int(start_step)
    problems = []
    events = [e for e in schedule.events if e.step >= start_step]
    if not events:
        return problems
    late = [e for e in events if e.step > total_steps]
    if late:
        problems.append(
            f"RePr's schedule (S1={schedule.s1}, S2={schedule.s2}, "
            f"{schedule.cycles} cycles = "
            f"{schedule.total_steps - schedule.start} steps"
            + (f", from step {schedule.start}" if schedule.start else "")
            + f") does not fit a run that ends after step {total_steps}: "
            f"{len(late)} of its events (the first: {late[0].kind} of cycle "
            f"{late[0].cycle + 1}, due after step {late[0].step}) will not "
            "happen. If the run ends while filters are dropped they are "
            "brought back (re-initialised) when it ends, untrained. Shorten "
            "S1 / S2 / cycles or train longer."
        )
    reinits = [e for e in events if e.kind == REINIT and e.step <= total_steps]
    if reinits:
        last = reinits[-1]
        tail = total_steps - last.step
        # The run, for RePr, starts where its schedule does (steps trained
        # before RePr was added do not train the new filters).
        length = total_steps - min(schedule.start, start_step)
        if tail < max(1, min_tail_fraction * length):
            problems.append(
                f"RePr's last re-initialisation (cycle {last.cycle + 1}, "
                f"after step {last.step}) leaves {tail} of the run's "
                f"{length} steps ({tail / max(length, 1):.0%}) to "
                "train the new filters; the paper leaves 10% at a high "
                "learning rate. Fewer cycles, a shorter S1 / S2 or a longer "
                "run fix it."
            )
    # Only a schedule of the step says in advance what the rate will be;
    # a variable that callbacks change is checked at each event instead
    # (`RePrCallback`).
    if learning_rate is not None:
        if is_step_schedule(learning_rate):
            probe = sorted(set(
                [int(s) for s in np.linspace(start_step, total_steps, 201)]
                + [e.step for e in events if e.step <= total_steps]))
            rates = {s: learning_rate_at(learning_rate, s) for s in probe}
            peak = max(rates.values())
            low = [(e, rates[e.step]) for e in events
                   if e.step <= total_steps and peak > 0
                   and rates[e.step] < min_lr_fraction * peak]
            if low:
                listed = ", ".join(
                    f"{e.kind} of cycle {e.cycle + 1} after step {e.step}: "
                    f"{rate:.3g} ({rate / peak:.0%})" for e, rate in low[:4])
                problems.append(
                    f"{len(low)} RePr event(s) fall at a learning rate below "
                    f"{min_lr_fraction:.0%} of the run's peak ({peak:.3g}): "
                    f"{listed}. Filters dropped or re-initialised then barely "
                    "train: the network loses accuracy it cannot win back. "
                    "Put the cycles early in the run (fewer cycles, shorter "
                    "S1 / S2) or use a schedule that keeps the learning "
                    "rate up while RePr runs (the paper's is nearly "
                    "constant)."
                )
    return problems
