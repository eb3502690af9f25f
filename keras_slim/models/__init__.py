"""Model zoo: the papers' networks, slimmable by default.

Every builder makes a stock Keras functional model and, unless called with
`slimmable=False`, returns `keras_slim.slim(...)` of it, so zoo models and
user models go through one conversion path.

Example:

>>> model = keras_slim.models.get("resnet20", width_range=(0.25, 1.0))
>>> plain = keras_slim.models.get("lenet_3c1l", slimmable=False,
...                               width_multiplier=0.5)
"""

from keras_slim.models.exits import resnet_exits
from keras_slim.models.lenet import lenet_3c1l
from keras_slim.models.mobilenet_v2 import mobilenet_v2
from keras_slim.models.resnet import resnet20
from keras_slim.models.resnet import resnet56
from keras_slim.models.resnet import resnet_cifar

_REGISTRY = {
    "lenet_3c1l": lenet_3c1l,
    "mobilenet_v2": mobilenet_v2,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet_exits": resnet_exits,
}


def names():
    """The model names `get` knows, sorted.

    Example:

    >>> keras_slim.models.names()
    ['lenet_3c1l', 'mobilenet_v2', 'resnet20', 'resnet56', 'resnet_exits']
    """
    return sorted(_REGISTRY)


def get(name, **kwargs):
    """Builds a zoo model by name.

    Args:
        name: One of `names()` (case-insensitive; `-` may stand for `_`).
        **kwargs: Passed to the builder, e.g. `input_shape`, `num_classes`,
            `width_range`, `widths`, `slimmable`.

    Returns:
        A `keras_slim.SlimmableModel`, or a `keras.Model` when
        `slimmable=False`.

    Raises:
        ValueError: for an unknown name, listing the known ones.

    Example:

    >>> model = keras_slim.models.get(
    ...     "mobilenet_v2", widths=[0.35, 0.5, 0.75, 1.0])
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(
            f"Unknown model {name!r}. Known models: {', '.join(names())}."
        )
    return _REGISTRY[key](**kwargs)


__all__ = [
    "get",
    "lenet_3c1l",
    "mobilenet_v2",
    "names",
    "resnet20",
    "resnet56",
    "resnet_cifar",
    "resnet_exits",
]
