"""Language identification with fastText (lid.176-style `__label__xx` models)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from inference.base import Backend
from inference.errors import InvalidInput, ModelLoadError
from inference.payloads import LanguageGuess, LanguageIdInput, Task

FASTTEXT_MAGIC = 793712314  # first int32 of every fastText model file
LABEL_PREFIX = "__label__"


def find_fasttext_file(path: Path) -> Path:
    """The model file itself, or the single .ftz/.bin file in a directory."""
    if path.is_dir():
        candidates = sorted([*path.glob("*.ftz"), *path.glob("*.bin")])
        candidates = [c for c in candidates if is_fasttext_file(c)]
        if len(candidates) != 1:
            raise ModelLoadError(f"Expected one fastText model in {path}, found {len(candidates)}.")
        return candidates[0]
    if not path.exists():
        raise ModelLoadError(f"fastText model not found at {path}.")
    if not is_fasttext_file(path):
        raise ModelLoadError(f"{path} is not a fastText model (bad magic number).")
    return path


def is_fasttext_file(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return int.from_bytes(handle.read(4), "little") == FASTTEXT_MAGIC
    except OSError:
        return False


class FastTextLanguageId(Backend):
    name = "fasttext"
    task = Task.LANGUAGE_ID
    option_types: ClassVar[dict[str, Any]] = {"max_characters": int, "max_top_k": int}

    def load(self) -> None:
        import fasttext

        model_file = find_fasttext_file(self.config.path)
        # fastText warns on stderr that load_model's return type changed; the warning is about its API, not us.
        fasttext.FastText.eprint = lambda *args, **kwargs: None
        self.model = fasttext.load_model(str(model_file))
        labels = self.model.get_labels()
        if not labels or not all(label.startswith(LABEL_PREFIX) for label in labels):
            raise ModelLoadError(f"{self.config.slug}: {model_file.name} has no __label__ language labels.")
        self.languages = [label.removeprefix(LABEL_PREFIX) for label in labels]
        self.max_characters = self.option("max_characters", 100_000)
        self.max_top_k = self.option("max_top_k", 20)

    def validate(self, item: Any) -> LanguageIdInput:
        if isinstance(item, str):
            item = LanguageIdInput(text=item)
        elif not isinstance(item, LanguageIdInput) or not isinstance(item.text, str):
            raise InvalidInput("Language identification takes text.")
        text = item.text
        if not text or text.isspace():
            raise InvalidInput("The text is empty.")
        if len(text) > self.max_characters:
            raise InvalidInput(f"The text has {len(text)} characters; the limit is {self.max_characters}.")
        if not 1 <= item.top_k <= self.max_top_k:
            raise InvalidInput(f"top_k must be between 1 and {self.max_top_k}.")
        return item

    def infer(self, batch: list[LanguageIdInput]) -> list[list[LanguageGuess]]:
        self.require_loaded()
        # fastText predicts one line at a time: a newline inside a text would end it early.
        texts = [item.text.replace("\n", " ") if "\n" in item.text else item.text for item in batch]
        k = max(item.top_k for item in batch)
        labels, probabilities = self.model.predict(texts, k=k)
        cut = len(LABEL_PREFIX)
        results = []
        for item, item_labels, item_probabilities in zip(batch, labels, probabilities):
            # fastText's probabilities may exceed 1 by a rounding hair.
            results.append([
                LanguageGuess(label[cut:], min(1.0, float(probability)))
                for label, probability in zip(item_labels[: item.top_k], item_probabilities[: item.top_k])
            ])
        return results

    def warmup_input(self) -> LanguageIdInput:
        return LanguageIdInput(text="Hello world")

    def memory_estimate_mb(self) -> float:
        # Quantised .ftz files expand a little when loaded.
        return super().memory_estimate_mb() * 1.5 + 5
