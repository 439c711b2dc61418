"""How fast the simple-Python generator writes tokens on one core, and how many characters a token holds.

Generation (with the `ast.parse` of every program) is timed alone; the token count comes from a
2048-token byte-level BPE trained on the first programs, as `prepare` would train one.

    python benchmarks/corpus_speed.py [--tokens 10000000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

from sparsecircuits.data.prepare import CHARS_PER_TOKEN, train_tokenizer
from sparsecircuits.data.simple_python import generate_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    programs = generate_corpus(int(args.tokens * CHARS_PER_TOKEN), args.seed)
    seconds = time.perf_counter() - start
    chars = sum(map(len, programs))
    tokenizer = train_tokenizer(programs[: len(programs) // 10], 2048)
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(programs))
    print(f"{len(programs):,} programs, {chars:,} characters, {tokens:,} tokens ({chars / tokens:.2f} characters a token)")
    print(f"generated and parsed in {seconds:.1f} s: {tokens / seconds * 60 / 1e6:.1f}M tokens a minute on one core")


if __name__ == "__main__":
    main()
