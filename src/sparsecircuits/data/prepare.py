"""Corpus discovery, tokenizer training and token arrays: `sparsecircuits prepare`.

A prepared data directory holds `tokenizer.json`, `train.bin` and `val.bin` (uint16 token
ids, documents separated by `<|endoftext|>`) and `manifest.json`, which is written last,
so a directory without it is never taken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import SparseCircuitsError
from ..schemas import file_problem
from ..io import check_output_dir, directory_lock, iter_jsonl, reserve_space, staged_directory

EOT = "<|endoftext|>"
MANIFEST = "manifest.json"
DATA_ENTRIES = frozenset({MANIFEST, "tokenizer.json", "train.bin", "val.bin"})  # what `prepare --force` may replace
TEXT_SUFFIXES = (".py", ".txt")
MIN_VAL_TOKENS = 8192  # below this a validation loss is too noisy to compare runs by


@dataclass
class Document:
    source: str  # path, path:line for a JSONL record, or simple-python:SEED:INDEX
    text: str
    sha256: str
    part: int = 0  # index of the corpus part it came from


@dataclass
class CorpusScan:
    documents: list[Document] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    duplicates: int = 0
    empty: int = 0


STDLIB, SIMPLE_PYTHON = "stdlib", "simple-python"  # the named corpora `--corpus` accepts beside paths
DEFAULT_GENERATED_TOKENS = 10_000_000
CHARS_PER_TOKEN = 4.2  # generated programs under a 2048-token BPE (benchmarks/corpus_speed.py: 4.19); the manifest has the count
REALISTIC_CHARS_PER_TOKEN = 2.97  # the standard library under its own 2048-token BPE: 31.4M characters, 10.56M tokens
# The default corpus: the standard library with this share of its training tokens generated simple Python,
# the share that `benchmarks/corpus_mix.py` measured best for the demo's tasks (docs/cli.md, prepare).
DEFAULT_SIMPLE_SHARE = 0.25
DEFAULT_CORPUS = [STDLIB, SIMPLE_PYTHON] if DEFAULT_SIMPLE_SHARE > 0 else [STDLIB]


def default_corpus_root() -> Path:
    """The running interpreter's standard library (site-packages is skipped by the scan)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _is_site_packages(path: Path) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in path.parts)


def _iter_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in sorted(filenames):
            if name.endswith(TEXT_SUFFIXES + (".jsonl",)):
                found.append(Path(dirpath) / name)
    return found


def scan_corpus(paths: list[Path], scan: CorpusScan | None = None, seen: set[str] | None = None) -> CorpusScan:
    """Read every document under `paths` in a deterministic order, dropping exact duplicates."""
    scan = scan or CorpusScan()
    seen = set() if seen is None else seen
    for root in paths:
        if not root.exists():
            raise SparseCircuitsError(f"corpus path not found: {root}")
        files = [f for f in _iter_files(root) if not _is_site_packages(f.relative_to(root) if f != root else Path(f.name))]
        if root.is_file() and not root.name.endswith(TEXT_SUFFIXES + (".jsonl",)):
            raise SparseCircuitsError(f"unsupported corpus file {root}: give .py, .txt or .jsonl files or folders of them")
        for path in files:
            for source, text in _read_documents(path, scan):
                _add_document(scan, seen, source, text)
    return scan


def _add_document(scan: CorpusScan, seen: set[str], source: str, text: str) -> None:
    if not text.strip():
        scan.empty += 1
        return
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest in seen:
        scan.duplicates += 1
        return
    seen.add(digest)
    scan.documents.append(Document(source, text, digest))


def scan_sources(corpus: list[str | Path], generated_tokens: int, seed: int,
                 simple_share: float | None = None) -> tuple[CorpusScan, list[dict]]:
    """Documents of every part of the corpus (`stdlib`, `simple-python` or a path), in order, without
    duplicates across parts; and one manifest entry per part. With `simple_share`, the generated part
    is sized to about that share of the training tokens, from the other parts' characters."""
    from .simple_python import generate_corpus

    seen: set[str] = set()
    read = {}  # the other parts come first: a share of generated text is sized from them
    for i, source in enumerate(corpus):
        if str(source) != SIMPLE_PYTHON:
            root = default_corpus_root() if str(source) == STDLIB else Path(source)
            read[i] = (root, scan_corpus([root], CorpusScan(), seen))
    if simple_share is not None:
        if not read or SIMPLE_PYTHON not in map(str, corpus):
            raise SparseCircuitsError(f"--simple-share mixes simple-python with other text: give --corpus {STDLIB} {SIMPLE_PYTHON}"
                                      " (or folders beside simple-python)")
        other_chars = sum(len(d.text) for _, part_scan in read.values() for d in part_scan.documents)
        generated_tokens = round(other_chars / REALISTIC_CHARS_PER_TOKEN * simple_share / (1 - simple_share))

    scan, parts = CorpusScan(), []
    for i, source in enumerate(corpus):
        before = len(scan.documents)
        if i in read:
            root, part_scan = read[i]
            scan.documents += part_scan.documents
            scan.undecodable += part_scan.undecodable
            scan.duplicates += part_scan.duplicates
            scan.empty += part_scan.empty
            part = {"corpus": str(source), "path": str(root)}
        else:
            for n, text in enumerate(generate_corpus(int(generated_tokens * CHARS_PER_TOKEN), seed)):
                _add_document(scan, seen, f"{SIMPLE_PYTHON}:{seed}:{n}", text)
            part = {"corpus": SIMPLE_PYTHON, "seed": seed, "tokens_asked": generated_tokens}
            if simple_share is not None:
                part["share_asked"] = simple_share
        for doc in scan.documents[before:]:
            doc.part = len(parts)
        parts.append({**part, "documents": len(scan.documents) - before, "tokens": {"train": 0, "val": 0}})
    return scan, parts


def _read_documents(path: Path, scan: CorpusScan):
    found = file_problem(path)
    if found:  # a pipe would block the read; a folder or a link loop cannot be read
        print(f"warning: skipped {path}: it {found}", file=sys.stderr)
        return
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (UnicodeDecodeError, OSError):
        scan.undecodable.append(str(path))
        return
    if not path.name.endswith(".jsonl"):
        yield str(path), text
        return
    for line_no, record in iter_jsonl(path, text):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise SparseCircuitsError(f"{path}:{line_no}: each line must be a JSON object with a string 'text' field")
        yield f"{path}:{line_no}", record["text"]


def _is_validation(doc: Document, val_fraction: float) -> bool:
    # Split by content hash: stable when files are added or removed elsewhere.
    return int(doc.sha256[:8], 16) / 0xFFFFFFFF < val_fraction


DEFAULT_VOCAB = 2048  # tokens of the byte-level BPE `prepare` trains


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def load_tokenizer(path: str | Path):
    """The HF `tokenizers` tokenizer in a tokenizer.json file (a data or run folder's)."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise SparseCircuitsError(f"tokenizer not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise SparseCircuitsError(f"{path} is not a valid tokenizer.json ({str(err).splitlines()[0]})") from None


def _write_tokens(path: Path, token_lists: list[list[int]], eot_id: int) -> int:
    total = sum(len(t) + 1 for t in token_lists)
    reserve_space(path, 2 * max(total, 1))  # uint16 tokens
    array = np.memmap(path, dtype=np.uint16, mode="r+", shape=(max(total, 1),))
    position = 0
    for tokens in token_lists:
        array[position : position + len(tokens)] = tokens
        array[position + len(tokens)] = eot_id
        position += len(tokens) + 1
    array.flush()
    del array
    return total


def prepare(
    out: str | Path,
    corpus: list[str | Path] | None = None,
    vocab_size: int = DEFAULT_VOCAB,
    val_fraction: float = 0.02,
    force: bool = False,
    show_progress: bool = True,
    generated_tokens: int = DEFAULT_GENERATED_TOKENS,
    seed: int = 0,
    simple_share: float | None = None,
    tokenizer: str | Path | None = None,
) -> dict:
    """Build a data directory from `corpus`: paths and the named corpora `stdlib` and `simple-python`
    (about `generated_tokens` tokens of generated programs, deterministic in `seed`, or about
    `simple_share` of all training tokens); default `DEFAULT_CORPUS` with `DEFAULT_SIMPLE_SHARE`.
    `tokenizer`: use this `tokenizer.json` (or a run's or data folder's) as it is, byte for byte,
    instead of training one: data for an imported model. Returns the manifest."""
    out = Path(out)
    if not corpus:
        corpus, simple_share = DEFAULT_CORPUS, (DEFAULT_SIMPLE_SHARE or None) if simple_share is None else simple_share
    if simple_share is not None and not 0 < simple_share < 1:
        raise SparseCircuitsError(f"--simple-share {simple_share} must be between 0 and 1 (a share of the training tokens)")
    if vocab_size < 257 or vocab_size > 65535:
        raise SparseCircuitsError(f"--vocab-size {vocab_size} is out of range: use 257..65535 (byte-level BPE, uint16 tokens)")
    if not 0 < val_fraction < 1:
        raise SparseCircuitsError(f"validation fraction {val_fraction} must be in (0, 1)")
    tokenizer_file = _given_tokenizer(tokenizer) if tokenizer is not None else None
    check_output_dir(out, "prepare", force, replaces=DATA_ENTRIES,
                     inputs=[("--corpus", source) for source in corpus if source not in ("stdlib", "simple-python")]
                     + [("--tokenizer", tokenizer_file)])
    with directory_lock(out):
        return _prepare(out, corpus, vocab_size, val_fraction, show_progress, generated_tokens, seed, simple_share,
                        tokenizer_file)


def _given_tokenizer(path: str | Path) -> Path:
    """A tokenizer.json, or the one in a run or data folder, checked to load and to separate documents."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise SparseCircuitsError(f"--tokenizer {path}: no tokenizer.json there; give the file, or the run or data"
                                  " folder holding it")
    tokenizer = load_tokenizer(file)
    if tokenizer.get_vocab_size() > 65536:
        raise SparseCircuitsError(f"--tokenizer {file} has {tokenizer.get_vocab_size():,} tokens: token arrays hold"
                                  " uint16 ids, so at most 65,536")
    if tokenizer.token_to_id(EOT) is None:
        raise SparseCircuitsError(f"--tokenizer {file} has no {EOT} token, which separates documents in the token"
                                  " arrays: give a tokenizer that has one")
    return file


def _prepare(out: Path, corpus: list[str | Path], vocab_size: int, val_fraction: float, show_progress: bool,
             generated_tokens: int, seed: int, simple_share: float | None, tokenizer_file: Path | None) -> dict:
    say = print if show_progress else (lambda *a, **k: None)
    say(f"reading {', '.join(map(str, corpus))}", file=sys.stderr)
    scan, parts = scan_sources(corpus, generated_tokens, seed, simple_share)
    if not scan.documents:
        raise SparseCircuitsError(
            f"the corpus {', '.join(map(str, corpus))} has no non-empty .py, .txt or .jsonl documents"
            f" ({len(scan.undecodable)} undecodable); point --corpus at Python source"
        )
    val_docs = [d for d in scan.documents if _is_validation(d, val_fraction)]
    train_docs = [d for d in scan.documents if not _is_validation(d, val_fraction)]
    if not val_docs:  # tiny corpora: the last document validates
        val_docs, train_docs = train_docs[-1:], train_docs[:-1]
    if not train_docs:
        raise SparseCircuitsError("the corpus has a single document: give at least two so training and validation can be split")
    say(f"{len(scan.documents)} documents ({len(train_docs)} train, {len(val_docs)} validation); "
        f"skipped {scan.duplicates} duplicates, {scan.empty} empty, {len(scan.undecodable)} undecodable", file=sys.stderr)
    if tokenizer_file is not None:
        say(f"tokenizing with {tokenizer_file}", file=sys.stderr)
        tokenizer = load_tokenizer(tokenizer_file)
    else:
        say(f"training a byte-level BPE with {vocab_size} tokens", file=sys.stderr)
        tokenizer = train_tokenizer([d.text for d in train_docs], vocab_size)
    eot_id = tokenizer.token_to_id(EOT)
    warnings = []
    if tokenizer_file is None and tokenizer.get_vocab_size() < 0.9 * vocab_size:
        warnings.append(f"the tokenizer learned only {tokenizer.get_vocab_size()} of the {vocab_size} tokens asked for:"
                        " the corpus is too small for more merges; give a larger corpus or a smaller --vocab-size")

    with staged_directory(out, command="prepare") as staging:
        if tokenizer_file is not None:  # as it is, so its digest is the run's
            shutil.copyfile(tokenizer_file, staging / "tokenizer.json")
        else:
            tokenizer.save(str(staging / "tokenizer.json"))
        files, counts = [], {}
        for split, docs in (("train", train_docs), ("val", val_docs)):
            token_lists = []
            for start in tqdm(range(0, len(docs), 256), desc=f"tokenizing {split}", unit="batch", disable=not show_progress):
                batch = docs[start : start + 256]
                token_lists += [e.ids for e in tokenizer.encode_batch([d.text for d in batch])]
            counts[split] = _write_tokens(staging / f"{split}.bin", token_lists, eot_id)
            for d, t in zip(docs, token_lists):
                parts[d.part]["tokens"][split] += len(t) + 1
                if parts[d.part]["corpus"] != SIMPLE_PYTHON:  # generated documents are named by their seed and index
                    files.append({"path": d.source, "sha256": d.sha256, "split": split, "tokens": len(t)})
        if counts["train"] - len(train_docs) <= 0:
            raise SparseCircuitsError("the corpus yields no tokens: give non-empty Python or text files")
        if counts["val"] < MIN_VAL_TOKENS:
            warnings.append(f"the validation split has only {counts['val']:,} tokens (fewer than {MIN_VAL_TOKENS:,}):"
                            " validation losses will be too noisy to compare; give a larger corpus or --val-fraction")
        manifest = {
            "format": 1,
            "corpus": [str(c) for c in corpus],
            "parts": parts,
            "vocab_size": tokenizer.get_vocab_size(),
            "eot_id": eot_id,
            "tokenizer_sha256": hashlib.sha256((staging / "tokenizer.json").read_bytes()).hexdigest(),
            "tokens": counts,
            "mix": {p["corpus"]: round(p["tokens"]["train"] / counts["train"], 4) for p in parts},  # share of train tokens
            "documents": {"train": len(train_docs), "val": len(val_docs)},
            "skipped": {"duplicates": scan.duplicates, "empty": scan.empty, "undecodable": len(scan.undecodable)},
            "undecodable_files": scan.undecodable,
            "warnings": warnings,
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    say(f"wrote {out}: {counts['train']:,} train and {counts['val']:,} validation tokens", file=sys.stderr)
    return manifest
