"""Reading a prepared data directory: token arrays through np.memmap, batches, the tokenizer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from .. import schemas
from ..errors import SparseCircuitsError, path_argument
from ..schemas import read_json
from .prepare import DEFAULT_SIMPLE_SHARE, MANIFEST, default_corpus_root, load_tokenizer, prepare


class TokenData:
    """A prepared data directory. Batches are a pure function of (seed, step), so resuming
    at step n reads exactly the batches an uninterrupted run would have."""

    def __init__(self, directory: str | Path):
        self.directory = path_argument(directory, "TokenData's directory")
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise SparseCircuitsError(
                f"{self.directory} is not a prepared data directory (no {MANIFEST}): run `sparsecircuits prepare --out {self.directory}`"
            )
        self.manifest = read_json(manifest_path, schemas.MANIFEST, "prepare the data again")
        if self.manifest["eot_id"] >= self.manifest["vocab_size"]:
            raise SparseCircuitsError(f"{manifest_path}: eot_id {self.manifest['eot_id']} is not a token of its vocabulary"
                                      f" of {self.manifest['vocab_size']}: prepare the data again")
        self.tokenizer_path = self.directory / "tokenizer.json"
        digest = hashlib.sha256(self.tokenizer_path.read_bytes()).hexdigest() if self.tokenizer_path.is_file() else None
        if digest != self.manifest.get("tokenizer_sha256"):
            raise SparseCircuitsError(f"{self.tokenizer_path} is missing or does not match {MANIFEST}: prepare the data again")
        self.vocab_size = int(self.manifest["vocab_size"])
        self.eot_id = int(self.manifest["eot_id"])
        self.splits = {}
        for split in ("train", "val"):
            path = self.directory / f"{split}.bin"
            expected = self.manifest["tokens"][split]
            if not path.is_file() or path.stat().st_size != 2 * expected:
                raise SparseCircuitsError(f"{path} is missing or truncated: prepare the data again")
            self.splits[split] = np.memmap(path, dtype=np.uint16, mode="r")

    def tokenizer(self):
        return load_tokenizer(self.tokenizer_path)

    def check_context(self, ctx_len: int) -> None:
        for split, tokens in self.splits.items():
            if len(tokens) < ctx_len + 2:
                raise SparseCircuitsError(
                    f"the {split} split has {len(tokens)} tokens, fewer than model.ctx_len + 2 = {ctx_len + 2}:"
                    " give a larger corpus or a smaller model.ctx_len"
                )

    def batch(self, split: str, batch_size: int, ctx_len: int, seed: int, step: int,
              rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of ctx_len + 1 tokens; rank r of w takes rows r, r + w, ... of the global batch."""
        tokens = self.splits[split]
        rng = np.random.default_rng([seed, step, 0 if split == "train" else 1])
        starts = rng.integers(0, len(tokens) - ctx_len - 1, size=batch_size)[rank::world_size]
        windows = self._windows(split, starts, ctx_len)
        return windows[:, :-1], windows[:, 1:]

    def eval_windows(self, split: str, ctx_len: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed evaluation set of up to `max_tokens` tokens: non-overlapping windows spread evenly
        over the whole split (the start of a split alone is a few files, not a fair sample)."""
        windows = self._windows(split, self.eval_window_starts(split, ctx_len, max_tokens), ctx_len)
        return windows[:, :-1], windows[:, 1:]

    def _windows(self, split: str, starts: np.ndarray, ctx_len: int) -> torch.Tensor:
        """Windows of ctx_len + 1 tokens, checked to hold ids of the vocabulary (a damaged file is
        found where it is read, without reading all of it at every open)."""
        tokens = self.splits[split]
        windows = np.stack([tokens[s : s + ctx_len + 1] for s in starts]).astype(np.int64)
        if windows.size and int(windows.max()) >= self.vocab_size:
            raise SparseCircuitsError(f"{self.directory / (split + '.bin')} holds token id {int(windows.max())}, outside"
                                      f" the {self.vocab_size}-token vocabulary of {MANIFEST}: prepare the data again")
        return torch.from_numpy(windows)

    def eval_window_starts(self, split: str, ctx_len: int, max_tokens: int) -> np.ndarray:
        """Where `eval_windows`' windows start in the split's token stream."""
        available = (len(self.splits[split]) - 1) // ctx_len
        n = max(1, min(available, max_tokens // ctx_len))
        return np.linspace(0, available - 1, n).round().astype(np.int64) * ctx_len


def default_data_dir(vocab_size: int = 2048) -> Path:
    """Where the implicit `prepare` of the default corpus is cached (named by its mix, so a change of
    the default never reuses a cache of another)."""
    cache = Path(os.environ.get("SPARSECIRCUITS_CACHE", Path.home() / ".cache" / "sparsecircuits"))
    stdlib = default_corpus_root()
    tag = hashlib.sha256(str(stdlib).encode()).hexdigest()[:8]
    mix = f"-simple{DEFAULT_SIMPLE_SHARE:g}" if DEFAULT_SIMPLE_SHARE else ""
    return cache / f"stdlib-{stdlib.name}-{tag}{mix}-v{vocab_size}"


def ensure_default_data(vocab_size: int = 2048) -> Path:
    directory = default_data_dir(vocab_size)
    if not (directory / MANIFEST).is_file():
        prepare(directory, vocab_size=vocab_size, force=True)
    return directory
