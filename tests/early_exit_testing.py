"""Small early-exit networks on 8x8 digits, shared by the early-exit tests."""

import keras

import keras_slim


def backbone(bn=True, name="net"):
    """A 3-block CNN; "b1" and "b2" are cut points (block outputs)."""
    inputs = keras.Input((8, 8, 1), name="images")
    x = inputs
    for i, (filters, strides) in enumerate([(8, 1), (16, 2), (16, 1)], 1):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                                name=f"c{i}")(x)
        if bn:
            x = keras.layers.BatchNormalization(momentum=0.9,
                                                name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"b{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


def early_exit_model(bn=True, head_bn=True, **kwargs):
    """`add_exits` on `backbone()`: 3 exits (after b1, after b2, final)."""
    kwargs.setdefault(
        "head", keras_slim.layers.ExitHead(filters=(8,), use_bn=head_bn)
    )
    return keras_slim.add_exits(backbone(bn), after=["b1", "b2"], **kwargs)


def head_weights(model, index):
    """Trainable weights of exit `index`'s head (the classifier for the
    last exit)."""
    prefix = (f"exit{index}_head" if index < model.num_exits
              else "classifier")
    return [
        w for layer in model.network.layers
        if layer.name.startswith(prefix) for w in layer.trainable_weights
    ]
