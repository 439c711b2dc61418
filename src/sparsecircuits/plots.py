"""Matplotlib without a display, for the PNGs the experiments and bridges write."""

from __future__ import annotations


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path) -> None:
    """Write a figure as PNG (whole: a temporary file renamed into place) and free it."""
    import io

    from .io import atomic_write_bytes

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
