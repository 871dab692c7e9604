"""The backend contract: a model is loaded once, then answers batches, one result (or error) per item."""
from __future__ import annotations

import gc
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from inference.errors import InferenceError, ModelLoadError, ModelNotLoaded

# Weight formats we load. Pickle-based formats (.bin of PyTorch, .pkl, .joblib) run code when read.
SAFE_WEIGHT_SUFFIXES = {".safetensors", ".ftz", ".onnx", ".gguf"}


@dataclass(frozen=True)
class ModelConfig:
    """Everything a backend needs to know about one model; built from a registry ModelSpec."""

    slug: str
    task: str
    backend: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    device: str = "cpu"
    # Other models this one calls through the pool, by role: {"embeddings": <config of MiniLM>}.
    dependencies: dict[str, "ModelConfig"] = field(default_factory=dict)


class Backend(ABC):
    """Subclasses implement `load` and `infer`; the pool does threading, batching and memory."""

    name: ClassVar[str]
    task: ClassVar[str]
    # Options a spec may set for this backend, with their types; the registry validates against it.
    option_types: ClassVar[dict[str, type | tuple[type, ...]]] = {}

    def __init__(self, config: ModelConfig):
        self.config = config
        self.loaded = False
        self.pool: Any = None  # the ModelPool that loaded this backend; set before load()

    # --- to implement ----------------------------------------------------------------------
    @abstractmethod
    def load(self) -> None:
        """Read the weights. Raise ModelLoadError, loudly, when they are missing or incompatible."""

    @abstractmethod
    def infer(self, batch: list[Any]) -> list[Any]:
        """One result per input, in order. An item that fails alone is returned as an InferenceError."""

    # --- defaults --------------------------------------------------------------------------
    def validate(self, item: Any) -> Any:
        """Check one input before it joins a batch; raise InvalidInput so only its caller fails."""
        return item

    def warmup_input(self) -> Any | None:
        return None

    def warmup(self) -> None:
        item = self.warmup_input()
        if item is not None:
            result = self.infer([self.validate(item)])[0]
            if isinstance(result, InferenceError):
                raise ModelLoadError(f"{self.config.slug}: warm-up inference failed: {result}")

    def unload(self) -> None:
        """Drop every reference to the weights; subclasses with native handles release them first."""
        for attribute in list(vars(self)):
            if attribute not in ("config", "loaded", "pool"):
                setattr(self, attribute, None)
        self.loaded = False
        gc.collect()

    def dependency(self, role: str) -> ModelConfig:
        try:
            return self.config.dependencies[role]
        except KeyError:
            raise ModelLoadError(f"{self.config.slug}: needs a {role!r} model and none is configured.") from None

    def memory_estimate_mb(self) -> float:
        """Weights on disk, a fair first guess at resident size; the pool replaces it by a measurement."""
        return weights_size_mb(self.config.path)

    # --- helpers for subclasses ------------------------------------------------------------
    def require_loaded(self) -> None:
        if not self.loaded:
            raise ModelNotLoaded(f"Model {self.config.slug} is not loaded.")

    def option(self, name: str, default: Any) -> Any:
        return self.config.options.get(name, default)

    def require_path(self, *names: str) -> Path:
        """The model directory, checked to hold each named file (a loud error otherwise)."""
        path = self.config.path
        if not path.exists():
            raise ModelLoadError(f"{self.config.slug}: weights not found at {path}.")
        missing = [name for name in names if not (path / name).exists()]
        if missing:
            raise ModelLoadError(f"{self.config.slug}: {path} lacks {', '.join(missing)}.")
        return path


def weights_size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    total = 0
    for root, _, files in os.walk(path):
        total += sum((Path(root) / name).stat().st_size for name in files)
    return total / 2**20


def refuse_pickled_weights(path: Path, slug: str) -> None:
    """Refuse a directory whose only weights are pickles: loading them would run arbitrary code."""
    if path.is_file():
        candidates = [path]
    else:
        candidates = [p for p in path.rglob("*") if p.is_file()]
    pickled = [p for p in candidates if p.suffix in {".pkl", ".pickle", ".joblib", ".pt", ".pth"} or p.name == "pytorch_model.bin"]
    safe = [p for p in candidates if p.suffix in SAFE_WEIGHT_SUFFIXES or p.name == "model.bin" and (p.parent / "config.json").exists()]
    if pickled and not safe:
        raise ModelLoadError(
            f"{slug}: only pickled weights ({', '.join(p.name for p in pickled[:3])}) found; "
            "Modelgate loads safetensors, CTranslate2, fastText, ONNX or GGUF files only."
        )


def require_safetensors(path: Path, slug: str) -> None:
    """For transformers models: safetensors or nothing (their .bin files are pickles)."""
    refuse_pickled_weights(path, slug)
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{slug}: {path} holds no .safetensors weights; only those are loaded.")
