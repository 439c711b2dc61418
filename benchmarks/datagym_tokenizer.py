"""The data-gym -> tokenizer.json conversion against tiktoken, at the authors' vocabulary size.

Trains a 2048-token byte-level BPE on part of the Python standard library, writes it as data-gym
files (vocab.bpe + encoder.json), converts them back with `tokenizer_from_datagym`, and encodes
every other standard-library file with both our tokenizer and tiktoken (same files, the authors'
tinypython pattern). Prints files, characters, tokens, files whose tokens differ, and both speeds.

    python benchmarks/datagym_tokenizer.py [--train-files 300] [--vocab-size 2048]
"""

from __future__ import annotations

import argparse
import sysconfig
import tempfile
import time
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, trainers

from sparsecircuits.interop.datagym import TINYPYTHON_PATTERN, tokenizer_from_datagym, write_datagym_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-files", type=int, default=300)
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args()
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    texts = []
    for path in files:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    train, test = texts[: args.train_files], texts[args.train_files :]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TINYPYTHON_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(train, trainer)
    bpe.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_datagym_files(bpe, Path(tmp) / "datagym")
        ranks = data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"))
        reference = tiktoken.Encoding("bench", pat_str=TINYPYTHON_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={"<|endoftext|>": len(ranks)})
        ours = tokenizer_from_datagym(folder)
    started = time.perf_counter()
    ours_ids = [e.ids for e in ours.encode_batch(test)]
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    their_ids = reference.encode_ordinary_batch(test)
    their_seconds = time.perf_counter() - started
    differing = sum(a != b for a, b in zip(ours_ids, their_ids))
    chars, tokens = sum(map(len, test)), sum(map(len, their_ids))
    print(f"vocabulary {ours.get_vocab_size()} (tiktoken {reference.n_vocab}); {len(test)} files, {chars:,} characters,"
          f" {tokens:,} tiktoken tokens")
    print(f"files whose tokens differ: {differing}; total token count ours {sum(map(len, ours_ids)):,}")
    print(f"encode speed: ours {chars / ours_seconds / 1e6:.1f} M chars/s, tiktoken {chars / their_seconds / 1e6:.1f} M chars/s")


if __name__ == "__main__":
    main()
