"""Early-exit networks: boosted training, anytime and budgeted inference.

- `EarlyExitModel`: a network with several exits; calling it returns the
  ensemble logits of every exit (BoostNet's `P_n = f_n + t * P_{n-1}`).
- `add_exits`: adds exits to an existing Keras backbone.
- `calibrate_exit_thresholds`: per-exit confidence thresholds for a MAC
  budget (MSDNet's budgeted batch classification), jointly with the width
  for slimmable early-exit networks.
- `EarlyExitModel.predict_dynamic`: budgeted inference with thresholds.
- `exit_logits`, `evaluate_policy`, `anytime_accuracy`, `last_exit_policy`:
  the same figures on cached validation or test logits, without another
  forward pass.
- `plot_budget_curve`: accuracy vs expected MACs.
- `NEVER_EXIT`: the threshold of an exit nobody leaves at (confidences are
  at most 1).

Example:

>>> model = keras_slim.add_exits(backbone, after=["block2", "block4"])
>>> model.compile("adam", metrics=["accuracy"])
>>> model.fit(train_ds, epochs=10)
>>> curve = keras_slim.calibrate_exit_thresholds(model, (x_val, y_val))
>>> keras_slim.early_exit.plot_budget_curve(
...     "budget.png", {"boosted": curve})
>>> # Exit 1 never, exit 2 at 90% confidence, the last exit takes the rest.
>>> model.predict_dynamic(
...     x_test, [keras_slim.early_exit.NEVER_EXIT, 0.9]).mean_macs
"""

from keras_slim.early_exit.budget import NEVER_EXIT
from keras_slim.early_exit.budget import ExitLogits
from keras_slim.early_exit.budget import ExitPolicy
from keras_slim.early_exit.budget import anytime_accuracy
from keras_slim.early_exit.budget import calibrate_exit_thresholds
from keras_slim.early_exit.budget import evaluate_policy
from keras_slim.early_exit.budget import exit_logits
from keras_slim.early_exit.budget import last_exit_policy
from keras_slim.early_exit.build import add_exits
from keras_slim.early_exit.model import DynamicPrediction
from keras_slim.early_exit.model import EarlyExitModel
from keras_slim.early_exit.plot import plot_budget_curve

__all__ = [
    "NEVER_EXIT",
    "DynamicPrediction",
    "EarlyExitModel",
    "ExitLogits",
    "ExitPolicy",
    "add_exits",
    "anytime_accuracy",
    "calibrate_exit_thresholds",
    "evaluate_policy",
    "exit_logits",
    "last_exit_policy",
    "plot_budget_curve",
]
