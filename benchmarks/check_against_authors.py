"""Our forward against the authors' own code on released-format models: the fixtures in
tests/fixtures/openai and any MODEL_DIR given (e.g. one written by `export-openai`).

Needs their package source (`openai/circuit_sparsity`, not a dependency of ours) on the path and
`blobfile` installed; their `load_model(cuda=False, flash=True)` builds their GPT, ours imports
the same folder, and both run the same tokens. Prints the largest logit difference per model.

    PYTHONPATH=/path/to/circuit_sparsity_src python benchmarks/check_against_authors.py [MODEL_DIR ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sparsecircuits.interop.openai import read_openai_model
from sparsecircuits.model.gpt import SparseGPT

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "openai"


def main() -> None:
    from circuit_sparsity.inference.gpt import load_model  # their code, from PYTHONPATH

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", nargs="*", type=Path)
    args = parser.parse_args()
    folders = sorted(p for p in FIXTURES.iterdir() if (p / "beeg_config.json").is_file()) + args.model_dirs
    print(f"{'model':40s} {'tokens':>6s} {'max |logit diff|':>17s} {'same argmax':>11s}")
    for folder in folders:
        try:
            theirs = load_model(str(folder), flash=True, cuda=False)
        except TypeError as err:  # their GPTConfig takes no training-only keys
            print(f"{folder.name:40s} their load_model refuses it: {err}")
            continue
        config, state, _ = read_openai_model(folder)
        ours = SparseGPT(config)
        ours.load_state_dict(state)
        ours.eval()
        tokens = torch.randint(0, config.vocab_size, (4, config.ctx_len), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            their_logits = theirs(tokens)[0]
            our_logits = ours(tokens)
        diff = float((their_logits - our_logits).abs().max())
        same = bool((their_logits.argmax(-1) == our_logits.argmax(-1)).all())
        print(f"{folder.name:40s} {tokens.numel():6d} {diff:17.3g} {str(same):>11s}")


if __name__ == "__main__":
    main()
