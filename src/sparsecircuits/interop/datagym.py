"""GPT-2 "data-gym" BPE files (`vocab.bpe` + `encoder.json`, the form of the authors' `tinypython_2k`
tiktoken encoding) as an equivalent HF `tokenizers` tokenizer.

tiktoken splits text with a regex, emits a piece that is itself a token whole, and otherwise merges
the adjacent pair whose concatenation has the lowest rank. The equivalent HF tokenizer splits with
the same regex, uses `ignore_merges` (whole pieces first) and merges derived from the ranks: every
split of a token into two lower-ranked tokens, ordered by the token's rank.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from ..errors import SparseCircuitsError
from ..schemas import PARSE_ERRORS

# The authors' tinypython pre-tokenizer (their `tiktoken_ext/tinypython.py`).
TINYPYTHON_PATTERN = r"""[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftext|>")


def _read(folder: Path) -> tuple[dict[str, int], list[str]]:
    paths = {name: folder / name for name in ("vocab.bpe", "encoder.json")}
    for name, path in paths.items():
        if not path.is_file():
            raise SparseCircuitsError(f"{folder} is not a data-gym tokenizer folder: {name} is missing")
    try:
        encoder = json.loads(paths["encoder.json"].read_text(encoding="utf-8"))
    except (UnicodeDecodeError, *PARSE_ERRORS) as err:
        raise SparseCircuitsError(f"{paths['encoder.json']} is not valid JSON ({str(err)[:120]})") from None
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise SparseCircuitsError(f"{paths['encoder.json']} must map token strings to integer ids")
    lines = paths["vocab.bpe"].read_text(encoding="utf-8").split("\n")
    merges = [line for line in lines[1:] if line.strip()]  # the first line is a version header
    return encoder, merges


def tokenizer_from_datagym(folder: str | Path, pattern: str = TINYPYTHON_PATTERN) -> Tokenizer:
    """The HF tokenizer equivalent to tiktoken's encoding of these data-gym files and `pattern`."""
    folder = Path(folder)
    encoder, merge_lines = _read(folder)
    special = {token: encoder.pop(token) for token in SPECIAL_TOKENS if token in encoder}
    merged = {"".join(line.split()) for line in merge_lines}
    if any(len(line.split()) != 2 for line in merge_lines) or not merged <= set(encoder):
        raise SparseCircuitsError(f"{folder}/vocab.bpe does not fit encoder.json (a merge line is not two tokens, or"
                                  " makes a token encoder.json lacks)")
    merges = []
    for token, rank in sorted(encoder.items(), key=lambda item: item[1]):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if encoder.get(left, rank) < rank and encoder.get(right, rank) < rank:
                merges.append((encoder[left], encoder[right], rank, left, right))
    merges.sort(key=lambda m: (m[2], m[0], m[1]))  # by the merged token's rank, as tiktoken merges
    bpe = models.BPE(vocab=encoder, merges=[(m[3], m[4]) for m in merges], ignore_merges=True)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    if special:
        from tokenizers import AddedToken

        tokenizer.add_special_tokens([AddedToken(token, special=True) for token in special])
        for token, token_id in special.items():
            if tokenizer.token_to_id(token) != token_id:
                raise SparseCircuitsError(f"{folder}/encoder.json gives {token} the id {token_id}, but it is not the"
                                          " next id after the BPE tokens; this layout is not supported")
    return tokenizer


def write_datagym_files(tokenizer: Tokenizer, folder: str | Path) -> Path:
    """A byte-level BPE tokenizer's vocabulary and merges as data-gym files, in tiktoken's rank order
    (the 256 bytes first, printable ones before the rest, then one token per merge, special tokens
    last). The files describe the same tokens and merges, renumbered: a token's id in them is its
    rank, not its id in `tokenizer` (ours give <|endoftext|> id 0). The pre-tokenizer's pattern is not
    part of these files either: whoever reads them supplies it."""
    state = json.loads(tokenizer.to_str())
    if state["model"].get("type") != "BPE":
        raise SparseCircuitsError("only a BPE tokenizer can be written as data-gym files")
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # tiktoken's byte ranks: printable bytes (their own characters, below 256) first, then the rest (256 + n)
    encoder = {ch: rank for rank, ch in enumerate(sorted(alphabet, key=ord))}
    for merge in merges:
        encoder.setdefault(merge.replace(" ", ""), len(encoder))
    for token in SPECIAL_TOKENS:
        if tokenizer.token_to_id(token) is not None:
            encoder[token] = len(encoder)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    return folder
