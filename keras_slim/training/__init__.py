"""Training-step math shared by `model.fit` and the custom loops."""

from keras_slim.training import boosting
from keras_slim.training.boosting import BoostedExitsObjective
from keras_slim.training.steps import LabelObjective
from keras_slim.training.steps import distillation_loss
from keras_slim.training.steps import multi_width_step
from keras_slim.training.steps import sandwich_widths
