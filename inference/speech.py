"""Speech recognition with Whisper (faster-whisper or transformers) and spoken intent on top of it."""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from abc import abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from inference.audio import SAMPLE_RATE
from inference.backends import backend_class
from inference.base import Backend, ModelConfig, require_safetensors, weights_size_mb
from inference.errors import InferenceError, InferenceTimeout, InvalidInput, ModelLoadError
from inference.payloads import AudioInput, Intent, LabelScore, Segment, Task, Transcription
from inference.runtime import configure_torch, cpu_threads

# What a voice-commerce assistant is asked most. Each intent is described by a few phrasings of
# the request, and a transcript takes the score of the phrasing it is closest to.
DEFAULT_INTENTS: dict[str, tuple[str, ...]] = {
    "add_to_cart": ("add this to my shopping cart", "I'll take two of these, I'd like to buy them", "put it in my basket"),
    "remove_from_cart": (
        "remove this item from my cart", "take that out of my basket", "I don't want this item in my cart anymore"
    ),
    "search": ("search for a product or find me one", "show me products like these", "do you have any of these in stock"),
    "checkout": ("check out and pay now", "buy everything in my cart now", "proceed to checkout"),
    "track_order": ("where is my order", "track my package delivery", "when will my parcel arrive"),
    "cancel_order": ("cancel my order", "I no longer want the order I placed", "call off my purchase"),
    "talk_to_human": ("talk to a human agent", "connect me to customer service", "let me speak to a real person"),
    "other": ("something unrelated to shopping", "what time is it", "tell me a joke"),
}


# --- shared by both Whisper backends ---------------------------------------------------------
def _check_audio(item: Any, *, max_seconds: float) -> AudioInput:
    if not isinstance(item, AudioInput):
        raise InvalidInput("Speech models take audio: mono float32 samples at 16 kHz (an AudioInput).")
    samples = item.samples
    if not isinstance(samples, np.ndarray):
        raise InvalidInput("The audio samples must be a numpy array.")
    if samples.dtype != np.float32:
        raise InvalidInput(f"The audio samples must be float32 at 16 kHz, not {samples.dtype}.")
    if samples.ndim != 1:
        raise InvalidInput(f"The audio must be mono, a one-dimensional array; got shape {samples.shape}.")
    if samples.size == 0:
        raise InvalidInput("The audio is empty.")
    if not np.isfinite(samples).all():
        raise InvalidInput("The audio contains NaN or infinite samples.")
    seconds = samples.size / SAMPLE_RATE
    if seconds > max_seconds:
        raise InvalidInput(f"The audio lasts {seconds:.0f} s; the limit is {max_seconds:.0f} s.")
    if item.language is not None and (not isinstance(item.language, str) or not item.language.strip()):
        raise InvalidInput("The language must be a code such as 'en' or 'fr'.")
    return item


def _language_code(value: str) -> str:
    """Whisper knows languages by bare codes: 'en-US', 'EN' and 'en_GB' all mean 'en'."""
    return value.strip().lower().replace("_", "-").split("-")[0]


def weighted_logprob(segments: Sequence[Segment]) -> float:
    """Segments' avg_logprob weighted by their duration, so a long doubtful passage outweighs a short sure one."""
    if not segments:
        # No speech is a confident empty answer; the emptiness check, not a low score, decides what follows.
        return 0.0
    weights = [max(segment.end - segment.start, 0.0) for segment in segments]
    if sum(weights) <= 0:
        return float(np.mean([segment.avg_logprob for segment in segments]))
    return float(np.average([segment.avg_logprob for segment in segments], weights=weights))


class _WhisperSpeech(Backend):
    """Input checks and language handling common to every Whisper runtime."""

    task = Task.SPEECH
    default_max_seconds: ClassVar[float] = 600.0

    multilingual: bool
    languages: frozenset[str]

    def max_seconds(self) -> float:
        return float(self.option("max_seconds", self.default_max_seconds))

    def validate(self, item: Any) -> AudioInput:
        item = _check_audio(item, max_seconds=self.max_seconds())
        if self.loaded:
            self.language_for(item)
        return item

    def language_for(self, item: AudioInput) -> str | None:
        """The language to decode in: the caller's, else the spec's `language` option, else None (detect)."""
        return self.resolve_language(item.language or self.option("language", None))

    def resolve_language(self, requested: str | None) -> str | None:
        if not requested:
            return None if self.multilingual else "en"
        code = _language_code(requested)
        if not self.multilingual and code != "en":
            raise InvalidInput(
                f"Model {self.config.slug} transcribes English ('en') only; it cannot transcribe {requested!r}."
            )
        if code not in self.languages:
            raise InvalidInput(f"Model {self.config.slug} does not know the language {requested!r}.")
        return code

    def check_forced_language(self) -> None:
        """A spec that forces a language the model lacks is a configuration error, reported at load."""
        forced = self.option("language", None)
        try:
            self.resolve_language(forced)
        except InvalidInput as exc:
            raise ModelLoadError(f"{self.config.slug}: option language={forced!r} is unusable: {exc}") from None

    def warmup_input(self) -> AudioInput:
        return AudioInput(samples=np.zeros(SAMPLE_RATE, np.float32))

    def infer(self, batch: list[AudioInput]) -> list[Transcription | InferenceError]:
        self.require_loaded()
        results: list[Transcription | InferenceError] = []
        for item in batch:
            try:
                results.append(self.transcribe(item))
            except InferenceError as exc:
                results.append(exc)
            except (RuntimeError, ValueError) as exc:
                results.append(InferenceError(f"{self.config.slug}: transcription failed: {exc}"))
        return results

    @abstractmethod
    def transcribe(self, item: AudioInput) -> Transcription:
        """One audio clip, decoded; InvalidInput for what the caller must fix."""


# --- faster-whisper (CTranslate2) ------------------------------------------------------------
class FasterWhisperSpeech(_WhisperSpeech):
    """A CTranslate2 Whisper model (a dir with model.bin, config.json, tokenizer.json).

    Options: compute_type ("int8"), beam_size (1: greedy; a beam of 5 carries five hypotheses
    through every decoding step, a cost two CPU cores feel on each request, for words that short
    commands rarely need), vad_filter (False), language
    (decode every request in this language unless the request names one), max_seconds (600),
    condition_on_previous_text (True), temperature_fallback (True: re-decode with sampling when
    greedy output looks broken, as Whisper does), initial_prompt (domain words, e.g. product names).
    """

    name = "faster-whisper"
    option_types: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "compute_type": str,
        "beam_size": int,
        "vad_filter": bool,
        "language": str,
        "max_seconds": (int, float),
        "condition_on_previous_text": bool,
        "temperature_fallback": bool,
        "initial_prompt": str,
    }

    def load(self) -> None:
        # Without tokenizer.json faster-whisper would fetch one from the hub.
        path = self.require_path("model.bin", "config.json", "tokenizer.json")
        from faster_whisper import WhisperModel

        try:
            self.model = WhisperModel(
                str(path),
                device=self.config.device,
                compute_type=self.option("compute_type", "int8"),
                cpu_threads=cpu_threads(),
                local_files_only=True,
            )
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(
                f"{self.config.slug}: {path} is not a usable CTranslate2 Whisper model: {exc}"
            ) from exc
        self.multilingual = bool(self.model.model.is_multilingual)
        self.languages = frozenset(self.model.supported_languages)
        self.check_forced_language()

    def transcribe(self, item: AudioInput) -> Transcription:
        language = self.language_for(item)
        fallback = self.option("temperature_fallback", True)
        raw_segments, info = self.model.transcribe(
            item.samples,
            language=language,
            beam_size=self.option("beam_size", 1),
            vad_filter=self.option("vad_filter", False),
            condition_on_previous_text=self.option("condition_on_previous_text", True),
            temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0] if fallback else [0.0],
            initial_prompt=self.option("initial_prompt", None),
        )
        raw_segments = list(raw_segments)  # decoding happens while this generator is consumed
        segments = [
            Segment(start=float(s.start), end=float(s.end), text=s.text.strip(), avg_logprob=float(s.avg_logprob))
            for s in raw_segments
        ]
        return Transcription(
            # Whisper puts the spaces between words in the tokens; languages without spaces keep none.
            text="".join(s.text for s in raw_segments).strip(),
            language=info.language,
            # A probability exists only when the model detected the language itself.
            language_probability=None if language else float(info.language_probability),
            duration=float(info.duration),
            avg_logprob=weighted_logprob(segments),
            segments=segments,
        )


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


# --- transformers ----------------------------------------------------------------------------
class TransformersWhisperSpeech(_WhisperSpeech):
    """A transformers Whisper model dir (config.json, preprocessor_config.json, tokenizer, safetensors).

    Clips up to 30 s (Whisper's window), batched in one `generate`. Options: beam_size (1),
    language, max_seconds (30, at most 30: longer audio belongs to faster-whisper, which segments it),
    max_new_tokens (224, half of Whisper's 448-token text window, as OpenAI's decoder uses).
    """

    name = "transformers-whisper"
    default_max_seconds: ClassVar[float] = 30.0
    option_types: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "beam_size": int,
        "language": str,
        "max_seconds": (int, float),
        "max_new_tokens": int,
    }

    def load(self) -> None:
        configure_torch()
        if self.max_seconds() > 30:
            raise ModelLoadError(f"{self.config.slug}: max_seconds is at most 30 for transformers Whisper.")
        path = self.require_path("config.json", "preprocessor_config.json")
        require_safetensors(path, self.config.slug)
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        self.torch = torch
        self.processor = WhisperProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = WhisperForConditionalGeneration.from_pretrained(
            str(path), use_safetensors=True, local_files_only=True
        ).to(self.config.device)
        self.model.eval()
        tokenizer = self.processor.tokenizer
        generation = copy.deepcopy(self.model.generation_config)
        declared = getattr(generation, "is_multilingual", None)
        # OpenAI's own rule when the generation config does not say: multilingual vocabularies have 51865+ entries.
        self.multilingual = bool(declared) if declared is not None else self.model.config.vocab_size >= 51865
        unknown = tokenizer.unk_token_id

        def token_id(token: str) -> int | None:
            found = tokenizer.convert_tokens_to_ids(token)
            return None if found is None or found == unknown else int(found)

        if getattr(generation, "no_timestamps_token_id", None) is None and token_id("<|notimestamps|>") is not None:
            generation.no_timestamps_token_id = token_id("<|notimestamps|>")
        if self.multilingual:
            # Hub checkpoints carry these maps; converted or hand-built ones may not, and generate needs them.
            if not getattr(generation, "lang_to_id", None):
                generation.lang_to_id = {
                    f"<|{code}|>": token_id(f"<|{code}|>") for code in LANGUAGES if token_id(f"<|{code}|>") is not None
                }
            if not getattr(generation, "task_to_id", None):
                generation.task_to_id = {task: token_id(f"<|{task}|>") for task in ("transcribe", "translate")}
            generation.is_multilingual = True
            self.language_ids = {token.strip("<|>"): int(i) for token, i in generation.lang_to_id.items()}
        else:
            self.language_ids = {}
        self.languages = frozenset(self.language_ids) if self.multilingual else frozenset({"en"})
        generation.num_beams = self.option("beam_size", 1)
        # The text window holds the prompt too: start, language, task and no-timestamps tokens.
        generation.max_new_tokens = min(
            self.option("max_new_tokens", 224), self.model.config.max_target_positions - 4
        )
        generation.output_scores = True
        generation.return_dict_in_generate = True
        self.generation = generation
        eos = generation.eos_token_id
        self.eos_id = int(eos if isinstance(eos, int) else eos[0])
        self.check_forced_language()

    def infer(self, batch: list[AudioInput]) -> list[Transcription | InferenceError]:
        self.require_loaded()
        results: list[Transcription | InferenceError | None] = [None] * len(batch)
        runnable: list[tuple[int, str | None]] = []
        for index, item in enumerate(batch):
            try:
                runnable.append((index, self.language_for(item)))
            except InferenceError as exc:
                results[index] = exc
        if runnable:
            transcriptions = self.transcribe_many([batch[i] for i, _ in runnable], [lang for _, lang in runnable])
            for (index, _), transcription in zip(runnable, transcriptions):
                results[index] = transcription
        return results  # type: ignore[return-value]  # every slot is filled above

    def transcribe(self, item: AudioInput) -> Transcription:
        return self.transcribe_many([item], [self.language_for(item)])[0]

    def transcribe_many(self, items: list[AudioInput], languages: list[str | None]) -> list[Transcription]:
        torch = self.torch
        features = self.processor.feature_extractor(
            [item.samples for item in items], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features.to(self.model.device, self.model.dtype)
        detected: dict[int, tuple[str, float]] = {}
        if self.multilingual:
            unknown = [i for i, language in enumerate(languages) if language is None]
            if unknown:
                detected = dict(zip(unknown, self.detect_languages(features[unknown])))
            languages = [language or detected[i][0] for i, language in enumerate(languages)]
        extra: dict[str, Any] = {"language": languages, "task": "transcribe"} if self.multilingual else {}
        with torch.inference_mode():
            output = self.model.generate(features, generation_config=self.generation, **extra)
        generated = output.sequences[:, -len(output.scores):] if output.scores else output.sequences[:, :0]
        scores = self.sequence_logprobs(output, generated)
        texts = self.processor.tokenizer.batch_decode(generated, skip_special_tokens=True)
        transcriptions = []
        for i, (item, text, score) in enumerate(zip(items, texts, scores)):
            duration = item.samples.size / SAMPLE_RATE
            text = text.strip()
            segments = [Segment(start=0.0, end=duration, text=text, avg_logprob=score)] if text else []
            transcriptions.append(
                Transcription(
                    text=text,
                    language=languages[i] if self.multilingual else "en",
                    language_probability=detected[i][1] if i in detected else None,
                    duration=duration,
                    avg_logprob=score,
                    segments=segments,
                )
            )
        return transcriptions

    def detect_languages(self, features: Any) -> list[tuple[str, float]]:
        """Whisper's own detection: the distribution over language tokens right after start-of-transcript."""
        torch = self.torch
        codes = list(self.language_ids)
        ids = torch.tensor([self.language_ids[code] for code in codes], device=self.model.device)
        start = torch.full((features.shape[0], 1), self.generation.decoder_start_token_id, device=self.model.device)
        with torch.inference_mode():
            logits = self.model(input_features=features, decoder_input_ids=start, use_cache=False).logits[:, -1]
        probabilities = logits[:, ids].float().softmax(dim=-1)
        best = probabilities.argmax(dim=-1)
        return [(codes[int(b)], float(probabilities[row, b])) for row, b in enumerate(best)]

    def sequence_logprobs(self, output: Any, generated: Any) -> list[float]:
        """Mean log-probability of each generated token up to and including end-of-text (padding excluded)."""
        torch = self.torch
        if getattr(output, "sequences_scores", None) is not None:
            # Beam search already reports the length-normalised sum of log-probabilities: the same mean.
            return [float(s) for s in output.sequences_scores]
        if generated.shape[1] == 0:
            return [0.0] * generated.shape[0]
        logprobs = torch.stack([step.float().log_softmax(dim=-1) for step in output.scores], dim=1)
        chosen = logprobs.gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        is_eos = generated == self.eos_id
        after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
        keep = ~after_eos & torch.isfinite(chosen)
        totals = torch.where(keep, chosen, torch.zeros_like(chosen)).sum(dim=1)
        counts = keep.sum(dim=1).clamp(min=1)
        return [float(v) for v in totals / counts]


# --- spoken intent ---------------------------------------------------------------------------
class SpeechIntent(Backend):
    """Speech → transcript → intent. The transcript comes from the "speech" dependency through the
    pool (or, with none configured, from the Whisper model in `path`); the intent from a trained
    text classifier (`intent_classifier_path`, labels in intent_labels.json) or, without one,
    zero-shot from label descriptions embedded by the "embeddings" dependency.

    Options: intents (label → description or list of descriptions; DEFAULT_INTENTS), temperature
    (0.05: cosine similarities are close together, a low temperature spreads them into usable
    probabilities), top_k (3), intent_classifier_path, max_seconds (600), empty_intent ("other",
    the answer for audio with no speech), speech_timeout (300 s).
    """

    name = "whisper-intent"
    task = Task.INTENT
    option_types: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "intents": dict,
        "temperature": (int, float),
        "top_k": int,
        "intent_classifier_path": str,
        "max_seconds": (int, float),
        "empty_intent": str,
        "speech_timeout": (int, float),
        # passed on to a speech model built from `path`
        **FasterWhisperSpeech.option_types,
        **TransformersWhisperSpeech.option_types,
    }

    def memory_estimate_mb(self) -> float:
        # The speech and embeddings models are pool entries of their own, counted there.
        classifier = self.classifier_path()
        return weights_size_mb(classifier) if classifier is not None and classifier.exists() else 1.0

    def classifier_path(self) -> Path | None:
        value = self.option("intent_classifier_path", None)
        if not value:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.config.path / path

    def load(self) -> None:
        if self.pool is None:
            raise ModelLoadError(f"{self.config.slug}: runs inside a ModelPool, which serves its speech model.")
        self.speech = self.speech_config()
        self.top_k = int(self.option("top_k", 3))
        if self.top_k < 1:
            raise ModelLoadError(f"{self.config.slug}: top_k must be at least 1.")
        classifier = self.classifier_path()
        if classifier is not None:
            self.load_classifier(classifier)
        else:
            self.load_zero_shot()

    def speech_config(self) -> ModelConfig:
        if "speech" in self.config.dependencies:
            return self.dependency("speech")
        path = self.config.path
        if (path / "model.bin").is_file():
            backend = "faster-whisper"
        elif (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            backend = "transformers-whisper"
        else:
            raise ModelLoadError(
                f"{self.config.slug}: needs a 'speech' model, and {path} holds no Whisper model to use instead."
            )
        known = backend_class(backend).option_types
        return ModelConfig(
            slug=f"{self.config.slug}.speech",
            task=Task.SPEECH,
            backend=backend,
            path=path,
            options={k: v for k, v in self.config.options.items() if k in known},
            max_batch_size=self.config.max_batch_size,
            max_wait_ms=self.config.max_wait_ms,
            device=self.config.device,
        )

    def load_zero_shot(self) -> None:
        intents = self.option("intents", DEFAULT_INTENTS)
        if not isinstance(intents, dict) or not intents:
            raise ModelLoadError(f"{self.config.slug}: option intents must map each label to its descriptions.")
        phrases: list[str] = []
        owners: list[int] = []
        for index, (label, descriptions) in enumerate(intents.items()):
            if isinstance(descriptions, str):
                descriptions = [descriptions]
            if not isinstance(label, str) or not descriptions or not all(
                isinstance(d, str) and d.strip() for d in descriptions
            ):
                raise ModelLoadError(f"{self.config.slug}: intent {label!r} needs one or more non-empty descriptions.")
            phrases.extend(descriptions)
            owners.extend([index] * len(descriptions))
        temperature = float(self.option("temperature", 0.05))
        if temperature <= 0:
            raise ModelLoadError(f"{self.config.slug}: temperature must be positive.")
        # Embedded once here: each request then costs one embedding of its transcript.
        vectors = self.pool.infer_many(self.dependency("embeddings"), phrases)
        self.phrase_vectors = np.stack([v.vector for v in vectors]).astype(np.float32)
        self.phrase_owner = np.asarray(owners)
        self.labels = list(intents)
        self.temperature = temperature
        self.classifier = None

    def load_classifier(self, path: Path) -> None:
        configure_torch()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"{self.config.slug}: no text classifier at {path}.")
        require_safetensors(path, self.config.slug)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.classifier = AutoModelForSequenceClassification.from_pretrained(
            str(path), use_safetensors=True, local_files_only=True, trust_remote_code=False
        ).to(self.config.device)
        self.classifier.eval()
        self.labels = self.read_labels(path, self.classifier.config)
        if len(self.labels) != self.classifier.config.num_labels:
            raise ModelLoadError(
                f"{self.config.slug}: {len(self.labels)} intent labels for a classifier with "
                f"{self.classifier.config.num_labels} outputs."
            )
        self.classify(["hello"])  # warm the classifier now; the speech model warms itself

    def read_labels(self, classifier_dir: Path, model_config: Any) -> list[str]:
        """Labels by output index: intent_labels.json (model dir, then classifier dir), else the classifier's config."""
        for candidate in (self.config.path / "intent_labels.json", classifier_dir / "intent_labels.json"):
            if candidate.is_file():
                try:
                    table = json.loads(candidate.read_text())
                    by_id = {int(i): str(label) for i, label in table["id_to_label"].items()}
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise ModelLoadError(f"{self.config.slug}: {candidate} is not a label table: {exc}") from None
                if sorted(by_id) != list(range(len(by_id))):
                    raise ModelLoadError(f"{self.config.slug}: {candidate} must number labels 0..n-1.")
                inverse = table.get("label_to_id")
                if inverse and any(by_id.get(int(i)) != label for label, i in inverse.items()):
                    raise ModelLoadError(f"{self.config.slug}: label_to_id and id_to_label disagree in {candidate}.")
                return [by_id[i] for i in range(len(by_id))]
        return [str(model_config.id2label[i]) for i in range(model_config.num_labels)]

    def validate(self, item: Any) -> AudioInput:
        return _check_audio(item, max_seconds=float(self.option("max_seconds", 600)))

    def warmup_input(self) -> AudioInput:
        return AudioInput(samples=np.zeros(SAMPLE_RATE, np.float32))

    def infer(self, batch: list[AudioInput]) -> list[Intent | InferenceError]:
        self.require_loaded()
        transcriptions = self.transcribe(batch)
        spoken = [i for i, t in enumerate(transcriptions) if isinstance(t, Transcription) and t.text.strip()]
        distributions = self.classify([transcriptions[i].text for i in spoken]) if spoken else np.zeros((0, 0))
        by_item = dict(zip(spoken, distributions))
        empty = self.option("empty_intent", "other")
        results: list[Intent | InferenceError] = []
        for index, transcription in enumerate(transcriptions):
            if isinstance(transcription, InferenceError):
                results.append(transcription)
            elif index not in by_item:
                # Silence is an answer, not a doubt: a confidence of 1 keeps it from being escalated.
                results.append(Intent(transcription, empty, 1.0, [LabelScore(empty, 1.0)]))
            else:
                probabilities = by_item[index]
                order = np.argsort(-probabilities)[: self.top_k]
                top = [LabelScore(self.labels[j], float(probabilities[j])) for j in order]
                results.append(Intent(transcription, top[0].label, top[0].score, top))
        return results

    def transcribe(self, batch: list[AudioInput]) -> list[Transcription | InferenceError]:
        """Every item queued on the speech model before waiting on any, so that they batch together there."""
        pending: list[Future | InferenceError] = []
        for item in batch:
            try:
                pending.append(self.pool.submit_many(self.speech, [item])[0])
            except InferenceError as exc:
                pending.append(exc)
        timeout = float(self.option("speech_timeout", 300))
        results: list[Transcription | InferenceError] = []
        for entry in pending:
            if isinstance(entry, InferenceError):
                results.append(entry)
                continue
            try:
                results.append(entry.result(timeout=timeout))
            except FutureTimeout:
                entry.cancel()
                results.append(InferenceTimeout(f"{self.speech.slug} did not transcribe within {timeout:.0f} s."))
            except InferenceError as exc:
                results.append(exc)
        return results

    def classify(self, texts: list[str]) -> np.ndarray:
        """One probability row per text, columns in `self.labels` order."""
        if self.classifier is not None:
            torch = self.torch
            encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.inference_mode():
                logits = self.classifier(**encoded.to(self.classifier.device)).logits
            return logits.float().softmax(dim=-1).cpu().numpy()
        vectors = np.stack([e.vector for e in self.pool.infer_many(self.dependency("embeddings"), texts)])
        similarities = vectors @ self.phrase_vectors.T  # cosine: both sides are L2-normalised
        per_label = np.full((len(texts), len(self.labels)), -np.inf, dtype=np.float32)
        for label in range(len(self.labels)):
            per_label[:, label] = similarities[:, self.phrase_owner == label].max(axis=1)
        logits = per_label / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)
