"""Speech recognition with Whisper (faster-whisper or transformers); spoken intent on top of it is inference.intent."""
from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from inference.audio import SAMPLE_RATE
from inference.base import Backend, require_safetensors
from inference.errors import InferenceError, InvalidInput, ModelLoadError
from inference.payloads import AudioInput, Segment, Task, Transcription
from inference.runtime import configure_torch, cpu_threads


def check_audio(item: Any, *, max_seconds: float) -> AudioInput:
    """`item` as a Whisper model takes it (mono float32 at 16 kHz, within `max_seconds`), or InvalidInput."""
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
        item = check_audio(item, max_seconds=self.max_seconds())
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
