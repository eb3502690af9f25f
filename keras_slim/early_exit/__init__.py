"""Early-exit networks: boosted training, anytime and budgeted inference.

- `EarlyExitModel`: a network with several exits; calling it returns the
  ensemble logits of every exit (BoostNet's `P_n = f_n + t * P_{n-1}`).
- `add_exits`: adds exits to an existing Keras backbone.
- `calibrate_exit_thresholds`: per-exit confidence thresholds for a MAC
  budget (MSDNet's budgeted batch classification), jointly with the width
  for slimmable early-exit networks.
- `EarlyExitModel.predict_dynamic`: budgeted inference with thresholds.
- `plot_budget_curve`: accuracy vs expected MACs.

Example:

>>> model = keras_slim.add_exits(backbone, after=["block2", "block4"])
>>> model.compile("adam", metrics=["accuracy"])
>>> model.fit(train_ds, epochs=10)
>>> curve = keras_slim.calibrate_exit_thresholds(model, (x_val, y_val))
>>> keras_slim.early_exit.plot_budget_curve(
...     "budget.png", {"boosted": curve})
"""

from keras_slim.early_exit.budget import NEVER_EXIT
from keras_slim.early_exit.budget import ExitLogits
from keras_slim.early_exit.budget import ExitPolicy
from keras_slim.early_exit.budget import anytime_accuracy
from keras_slim.early_exit.budget import assign_exits
from keras_slim.early_exit.budget import calibrate_exit_thresholds
from keras_slim.early_exit.budget import evaluate_policy
from keras_slim.early_exit.budget import exit_logits
from keras_slim.early_exit.budget import exit_shares
from keras_slim.early_exit.budget import first_exit_policy
from keras_slim.early_exit.budget import last_exit_policy
from keras_slim.early_exit.budget import policy_for_q
from keras_slim.early_exit.budget import q_family
from keras_slim.early_exit.budget import thresholds_for_shares
from keras_slim.early_exit.build import add_exits
from keras_slim.early_exit.build import insert_gradient_rescale
from keras_slim.early_exit.graph import ExitStructure
from keras_slim.early_exit.model import DynamicPrediction
from keras_slim.early_exit.model import EarlyExitModel
from keras_slim.early_exit.plot import plot_budget_curve
