"""Training-step math shared by `model.fit` and the custom loops.

`SlimmableModel.train_step` and `EarlyExitModel.train_step` run
`multi_width_step` with the widths of `sandwich_widths` and a per-output
objective (`LabelObjective`, or `BoostedExitsObjective` for exits); a
training loop of one's own can do the same.

Example:

>>> objective = keras_slim.training.LabelObjective(
...     keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> @tf.function
... def train_step(x, y):
...     widths = keras_slim.training.sandwich_widths(
...         (0.25, 1.0), 4, optimizer.iterations)
...     def forward(width, is_widest):
...         return model.forward(x, width, training=True,
...                              update_moving_stats=is_widest)
...     loss, _ = keras_slim.training.multi_width_step(
...         forward, widths, objective, optimizer,
...         model.trainable_weights, y, inplace_distillation=True)
...     return loss
"""

from keras_slim.training.boosting import BoostedExitsObjective
from keras_slim.training.steps import LabelObjective
from keras_slim.training.steps import distillation_loss
from keras_slim.training.steps import multi_width_step
from keras_slim.training.steps import sandwich_widths

__all__ = [
    "BoostedExitsObjective",
    "LabelObjective",
    "distillation_loss",
    "multi_width_step",
    "sandwich_widths",
]
