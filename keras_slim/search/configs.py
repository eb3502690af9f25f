"""Searched channel configurations: JSON files and per-layer dicts.

A configuration is a dict layer name -> channels, the form every width
argument of keras_slim accepts (`set_width`, `calibrate_bn`, `strip`,
`profile`, the exporters, the trainers' `--searched_config`).
"""

import json
import os
import warnings

from keras_slim import files

FORMAT = "keras_slim.search/1"


class Configuration(dict):
    """A searched configuration: a dict layer name -> channels with a name.

    It is a plain dict everywhere a width is accepted (and compares equal
    to one); its `name` tags the files and report rows made from it (e.g.
    `net_like_1x.tflite` instead of a hash of the channels).

    Example:

    >>> config = Configuration("like_1x", {"stem": 16, "head": 640})
    >>> config.name, dict(config)
    ('like_1x', {'stem': 16, 'head': 640})
    """

    def __init__(self, name, channels, searched=False):
        super().__init__(channels)
        self.name = str(name)
        # Read from a search result: it names every slimmable layer of the
        # model it was searched on (`set_width` warns when it does not).
        self.searched = bool(searched)

    def __repr__(self):
        return f"Configuration({self.name!r}, {dict.__repr__(self)})"

    def __reduce__(self):
        return (Configuration, (self.name, dict(self), self.searched))


def config_from_counts(model, counts):
    """The dict layer name -> channels of group `counts` (every layer).

    Args:
        model: A `keras_slim.SlimmableModel`.
        counts: Channel counts aligned with `model.channel_groups`.

    Example:

    >>> config_from_counts(model, model.channels_for(0.5))
    {'stem': 16, 'block1_project': 8, ...}
    """
    by_group = dict(zip(model.channel_groups, (int(c) for c in counts)))
    return {
        name: by_group[group]
        for name, group in model._group_of_layer.items()
    }


def write_json(path, data):
    """Writes `data` as JSON atomically (a crash leaves the old file)."""
    files.write_json_atomic(path, data, indent=1)


def save_configs(path, results):
    """Writes a search result (see `autoslim`) as JSON, atomically."""
    write_json(path, dict(results, format=FORMAT))


def load_configs(path):
    """Reads the configurations of an `autoslim` output file.

    Args:
        path: A JSON file written by `keras_slim.search.autoslim`.

    Returns:
        dict name -> configuration (a `Configuration`: a dict layer name ->
        channels that also carries its name), largest target first.

    Raises:
        ValueError: for a missing file or a file that is not a search
            result.

    Example:

    >>> configs = keras_slim.search.load_configs("search.json")
    >>> model.set_width(configs["macs_40M"])
    >>> keras_slim.strip(model, configs["macs_40M"])
    """
    data = read_results(path)
    if data.get("finished") is False:
        found = [entry["name"] for entry in data["configs"]]
        missing = [n for n in data.get("targets", []) if n not in found]
        warnings.warn(
            f"'{os.fspath(path)}' holds an unfinished search (stopped by "
            f"max_steps): {len(found)} configuration(s)"
            + (f"; not reached yet: {', '.join(missing)}" if missing else "")
            + ". Run autoslim again with the same progress_path to finish "
            "it.", stacklevel=2)
    return {
        entry["name"]: Configuration(
            entry["name"],
            {k: int(v) for k, v in entry["channels"].items()},
            searched=True)
        for entry in data["configs"]
    }


def read_results(path):
    """The whole search result of an `autoslim` output file (a dict)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"No search result file at '{path}'.")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"'{path}' is not JSON ({error}); pass a file written by "
                "keras_slim.search.autoslim."
            ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not (
        isinstance(data.get("configs"), list)
    ):
        raise ValueError(
            f"'{path}' is not a keras_slim.search result (expected "
            f"format '{FORMAT}' with a 'configs' list)."
        )
    return data
