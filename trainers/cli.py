"""What the command-line programs share: `--help` and output-folder checks.

absl's `--help` prints the docstring of `__main__` and the *key flags of
the main module*, which absl looks up under `sys.argv[0]`. Run as
`python -m trainers.train` that is the program's own file; run through a
console script (`keras-slim-train`, `keras-slim-demo`) it is the script
pip wrote, which defines no flags and has no docstring, so `--help` used to
print only "Try --helpfull". `show_on_help` registers the program's flags
for whatever `sys.argv[0]` is.

Example:

    def run():  # console entry point
        cli.show_on_help(sys.modules[__name__], [trainer_flags])
        app.run(main)
"""

import os
import sys

from absl import flags


def show_on_help(program, flag_modules=(), flag_values=flags.FLAGS):
    """Makes `--help` describe `program` and list its flags.

    Args:
        program: The program's module (its docstring becomes the help text
            when `__main__` has none, as under a console script).
        flag_modules: Further modules whose flags belong to the program
            (e.g. `trainers.flags`).
        flag_values: The `FlagValues` holding them.
    """
    main = sys.modules.get("__main__")
    if main is not None and not getattr(main, "__doc__", None):
        main.__doc__ = program.__doc__
    for module in (program, *flag_modules):
        # `python -m` registers the program's own flags under argv[0]
        # already; under a console script they sit under its module name.
        for name in {module.__name__, getattr(module, "__file__", None)}:
            if not name:
                continue
            for flag in flag_values.get_key_flags_for_module(name):
                flag_values.register_key_flag_for_module(sys.argv[0], flag)


def check_output_dir(path, flag_name):
    """Refuses an output folder that cannot be a folder; returns True.

    Args:
        path: The folder a program will create (or reuse). Remote paths
            (`gs://...`) are left to TensorFlow's file system.
        flag_name: Named in the error, e.g. `"--model_dir"`.

    Raises:
        ValueError: if `path` is an existing file, or lies under one, or
            its nearest existing parent is not writable.
    """
    if not path or "://" in str(path):
        return True
    full = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.exists(full) and not os.path.isdir(full):
        raise ValueError(
            f"{flag_name}={path} is an existing file, not a folder "
            f"({full}). Pass a folder path (it is created if needed), or "
            "move the file away."
        )
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(
            f"{flag_name}={path} cannot be created: {parent} is a file, not "
            "a folder. Pass a folder path."
        )
    if not os.path.exists(full) and not os.access(parent, os.W_OK):
        raise ValueError(
            f"{flag_name}={path} cannot be created: {parent} is not "
            "writable. Pass a folder path you can write to."
        )
    if os.path.isdir(full) and not os.access(full, os.W_OK):
        raise ValueError(
            f"{flag_name}={path} is not writable. Pass a folder you can "
            "write to."
        )
    return True


def validate_output_dir(flag_name, flag_values=flags.FLAGS):
    """Registers `check_output_dir` as an absl validator of `--flag_name`.

    A bad value then stops the program at flag parsing with
    `FATAL Flags parsing error: ...` and no traceback.
    """

    def check(value):
        try:
            return check_output_dir(value, f"--{flag_name}")
        except ValueError as err:
            # absl prefixes "flag --name=value: " itself.
            raise flags.ValidationError(
                str(err).removeprefix(f"--{flag_name}={value} ")) from None

    flags.register_validator(flag_name, check, flag_values=flag_values)
