"""Keras layers with a dynamic width."""

from keras_slim.layers.scope import ActiveWidth
from keras_slim.layers.scope import active_width
from keras_slim.layers.channelwise import SlimChannelwise
from keras_slim.layers.convolution import SlimConv1D
from keras_slim.layers.convolution import SlimConv2D
from keras_slim.layers.convolution import SlimConv3D
from keras_slim.layers.convolution import SlimDense
from keras_slim.layers.convolution import SlimDepthwiseConv2D
from keras_slim.layers.convolution import SlimSeparableConv2D
from keras_slim.layers.normalization import SlimBatchNormalization
from keras_slim.layers.normalization import SlimLayerNormalization
from keras_slim.layers.normalization import SwitchableBatchNormalization
from keras_slim.layers.exit_head import EnsembleLogits
from keras_slim.layers.exit_head import ExitConfidence
from keras_slim.layers.exit_head import ExitHead
from keras_slim.layers.exit_head import GradientRescale
