"""Training-step math shared by `model.fit` and the custom loops."""

from keras_slim.training.steps import distillation_loss
from keras_slim.training.steps import multi_width_losses
from keras_slim.training.steps import sandwich_widths
from keras_slim.training import boosting
