"""The authors' released models by name, from their public store into a local cache.

`import-openai csp_yolo1 --out RUN` fetches `models/csp_yolo1/{beeg_config.json,final_model.pt}` and the
`tinypython` tokenizer (`vocab.bpe`, `encoder.json`) from the store their release names
(`OPENAI_STORE`; `SPARSECIRCUITS_OPENAI_STORE` points elsewhere, e.g. a mirror), into
`~/.cache/sparsecircuits/openai` (`SPARSECIRCUITS_CACHE`), with a progress bar. A partial file
(`NAME.part`) is resumed with an HTTP range request; a file is moved into place only whole (its length
as the server announced it), and its sha256 is recorded beside it and checked again whenever the cache
is used, so a damaged cached file is refused by name rather than read.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import SparseCircuitsError

OPENAI_STORE = "https://openaipublic.blob.core.windows.net/circuit-sparsity"
MODEL_FILES = ("beeg_config.json", "final_model.pt")
TOKENIZER_FILES = ("vocab.bpe", "encoder.json")
TOKENIZER_FOLDER = "tinypython"  # the tinypython_2k tokenizer every released model uses
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CHUNK = 1 << 20


def store_url() -> str:
    return os.environ.get("SPARSECIRCUITS_OPENAI_STORE", OPENAI_STORE).rstrip("/")


def cache_root() -> Path:
    return Path(os.environ.get("SPARSECIRCUITS_CACHE", Path.home() / ".cache" / "sparsecircuits")) / "openai"


def is_model_name(text: str) -> bool:
    """A released model's name (csp_yolo1, csp_sweep1_...) rather than a folder: no path separator."""
    return bool(NAME.match(text)) and not Path(text).exists()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path, offline: bool = False, show_progress: bool = True) -> str:
    """`url` into `dest` (resuming `dest.part`), or `dest` as cached; its sha256, checked against the one
    recorded when it was downloaded."""
    recorded = dest.with_name(dest.name + ".sha256")
    if dest.is_file():
        digest = _sha256(dest)
        if recorded.is_file() and recorded.read_text().strip() != digest:
            raise SparseCircuitsError(f"the cached {dest} is damaged (its sha256 is not the one recorded when it was"
                                      f" downloaded): delete it and run the command again")
        return digest
    if offline:
        raise SparseCircuitsError(f"{dest} is not in the cache and --offline forbids downloading {url}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is already whole
            response = None
        elif err.code == 404:
            raise SparseCircuitsError(f"{url} does not exist (HTTP 404): is the model's name right?") from None
        else:
            raise SparseCircuitsError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SparseCircuitsError(f"cannot reach {url} ({reason}): no network? Copy the files into {dest.parent} and"
                                  " pass --offline, or import from a local folder") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0  # the server sent the whole file
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr,
                    disable=not show_progress) as bar:
                try:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        f.write(block)
                        bar.update(len(block))
                except (OSError, urllib.error.URLError) as err:
                    raise SparseCircuitsError(f"downloading {url} stopped ({err}): run the command again to resume") from None
        if total is not None and part.stat().st_size != total:
            raise SparseCircuitsError(f"downloading {url} stopped at {part.stat().st_size:,} of {total:,} bytes: run the"
                                      " command again to resume")
    digest = _sha256(part)
    os.replace(part, dest)
    recorded.write_text(digest + "\n")
    return digest


def fetch_released_model(name: str, offline: bool = False, show_progress: bool = True) -> tuple[Path, Path, dict]:
    """(model folder, tokenizer folder, {file: sha256}) of the released model `name`, from the cache or
    the store."""
    if not NAME.match(name):
        raise SparseCircuitsError(f"'{name}' is neither a folder nor a released model's name (e.g. csp_yolo1)")
    root, store = cache_root(), store_url()
    model_dir, tokenizer_dir = root / "models" / name, root / TOKENIZER_FOLDER
    digests = {}
    for folder, remote, files in ((model_dir, f"models/{name}", MODEL_FILES), (tokenizer_dir, TOKENIZER_FOLDER, TOKENIZER_FILES)):
        for file in files:
            digests[f"{remote}/{file}"] = fetch(f"{store}/{remote}/{file}", folder / file, offline, show_progress)
    return model_dir, tokenizer_dir, digests
