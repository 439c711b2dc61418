"""Process-level tuning around the training loop: glibc's malloc, the memory a config needs, and Ctrl-C."""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import threading
from pathlib import Path

import torch

from ..config import Config
from ..errors import SparseCircuitsError


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (`train.keep_freed_memory`): tensors up to
    1 GiB come from the heap instead of fresh mappings, and the heap is not trimmed. Otherwise every
    step's large activations and gradients are mapped, faulted in page by page (zeroed by the
    kernel) and unmapped again, which costs more than the selection itself on the sparse step. The
    process keeps its peak resident memory. Process-wide; returns False where the C library is not
    glibc (nothing changes there)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def available_memory(device: torch.device) -> int:
    """Bytes that a new allocation can take: free GPU memory, or the memory the OS reports available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def training_memory_estimate(config: Config, batch_rows: int) -> tuple[int, int]:
    """(bytes for parameters, gradients and AdamW moments, bytes of activations kept for the backward
    of one batch): a lower bound of what training needs, from the config alone."""
    m = config.model
    inner = m.heads * m.d_head
    per_layer = 2 * 3 * m.d_model * inner + inner * m.d_model + 2 * m.d_model * m.mlp_width  # q, k, v, o, fc, proj
    params = (m.n_layer * per_layer + 2 * m.vocab_size * m.d_model + m.vocab_size ** 2 * m.bigram_table
              + m.ctx_len * (m.concat_positions or m.d_model) * (m.positional != "none"))
    per_token = m.n_layer * (10 * m.d_model + 6 * inner + 3 * m.mlp_width) + 3 * m.vocab_size
    return 16 * params, 4 * per_token * batch_rows * m.ctx_len


def check_memory(config: Config, batch_rows: int, device: torch.device) -> None:
    weights, activations = training_memory_estimate(config, batch_rows)
    available = available_memory(device)
    if weights + activations > available:
        gib = lambda n: f"{n / 2**30:,.1f} GiB"
        raise SparseCircuitsError(
            f"training this config needs at least {gib(weights + activations)} on {device.type} ({gib(weights)} for weights,"
            f" gradients and optimizer state, {gib(activations)} of activations for {batch_rows} x {config.model.ctx_len}"
            f" tokens) but {gib(available)} is available: make the model (model.d_model, n_layer, d_mlp) or the batch"
            " (train.batch_size, model.ctx_len) smaller")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C handled by the training loop: the checkpoint is written and the loop said so."""


class StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop at the end of the current step (so the checkpoint
    is consistent); a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
