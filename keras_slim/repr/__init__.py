"""RePr: improved training of convolutional filters.

Train the full network, temporarily drop the most redundant filters
(ranked by inter-filter orthogonality over all layers together), train the
sub-network, bring the dropped filters back re-initialised orthogonally to
the kept ones, and repeat.

- `rank_filters(model)`: the global ranking (`.summary()` per layer).
- `RePrCallback(s1, s2, cycles, drop_fraction)`: RePr under `model.fit`;
  the schedule is checked against the run.
- `RePrController`, `RePrSchedule`: the same logic for custom loops (the
  trainers' `--method=repr`).
- `PAPER`: the options that give the paper's exact method. The defaults
  differ where the paper's choices break networks it was not tried on
  (ranking relative to chance for each layer's fan-in, a per-layer
  ceiling, layers with more filters than fan-in left out, BN channels that
  keep the network working, BN statistics re-estimated after each event);
  see the README's RePr section for the measurements.

Example:

>>> model.fit(train_ds, epochs=100, callbacks=[
...     keras_slim.repr.RePrCallback(s1=20, s2=10, cycles=3,
...                                  drop_fraction=0.3)])
>>> paper = keras_slim.repr.RePrCallback(20, 10, 3, 0.3,
...                                      **keras_slim.repr.PAPER)

Reference:
    Prakash, Storer, Florencio & Zhang, RePr: Improved Training of
    Convolutional Filters, CVPR 2019 (https://arxiv.org/abs/1811.07275).
"""

from keras_slim.repr.callback import RePrCallback
from keras_slim.repr.core import PAPER
from keras_slim.repr.core import RePrController
from keras_slim.repr.ranking import FilterRanking
from keras_slim.repr.ranking import chance_overlap
from keras_slim.repr.ranking import orthogonality_scores
from keras_slim.repr.ranking import rank_filters
from keras_slim.repr.reinit import max_abs_cosine
from keras_slim.repr.schedule import RePrSchedule
from keras_slim.repr.schedule import check_run

__all__ = [
    "PAPER",
    "FilterRanking",
    "RePrCallback",
    "RePrController",
    "RePrSchedule",
    "chance_overlap",
    "check_run",
    "max_abs_cosine",
    "orthogonality_scores",
    "rank_filters",
]
