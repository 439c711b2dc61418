"""The one exception type users see as a one-line message from the CLI."""


class SparseCircuitsError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""


def path_argument(value, name: str):
    """`value` as a Path, or a TypeError naming the argument: Python API entry points take a str or
    os.PathLike, never a number or None."""
    import os
    from pathlib import Path

    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (a str or pathlib.Path), not {type(value).__name__}")
    return Path(value)
