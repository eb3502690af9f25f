"""RePr's schedule: S1 steps of the full network, S2 of the sub-network,
`cycles` times, then ordinary training to the end."""

import dataclasses

DROP = "drop"
REINIT = "reinit"


def check_positive_int(value, name, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} must be an integer >= 1 ({what}); got {value!r}."
        )
    return value


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
    `[c * (s1 + s2), c * (s1 + s2) + s1)`, drops filters once that many
    steps are done, trains the sub-network for `s2` steps and then brings
    the dropped filters back, re-initialised. After `cycles` cycles the
    network trains normally until the end.

    Args:
        s1: Steps of full-network training before each drop (>= 1).
        s2: Steps of sub-network training after each drop (>= 1).
        cycles: How many drop / re-initialise cycles (>= 1).

    Example:

    >>> schedule = RePrSchedule(s1=20 * 703, s2=10 * 703, cycles=3)
    >>> [(e.step, e.kind) for e in schedule.events][:2]
    [(14060, 'drop'), (21090, 'reinit')]
    """

    s1: int
    s2: int
    cycles: int

    def __post_init__(self):
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
            start = cycle * (self.s1 + self.s2)
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
        """Steps until the last re-initialisation."""
        return self.cycles * (self.s1 + self.s2)

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
    def from_epochs(cls, s1, s2, cycles, steps_per_epoch):
        """A schedule given in epochs (the paper's S1 = 20, S2 = 10)."""
        check_positive_int(s1, "S1", "epochs of full-network training")
        check_positive_int(s2, "S2", "epochs of sub-network training")
        check_positive_int(
            steps_per_epoch, "steps_per_epoch", "batches per epoch"
        )
        return cls(s1 * steps_per_epoch, s2 * steps_per_epoch, cycles)
