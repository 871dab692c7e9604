"""Machine translation with CTranslate2: NLLB/M2M100 (one model, many languages) and Marian/OPUS-MT (one pair)."""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from inference.base import Backend
from inference.errors import InvalidInput, ModelLoadError
from inference.languages import NLLB_CODES, language_name, to_iso, to_nllb
from inference.payloads import Task, Translation, TranslationInput
from inference.runtime import cpu_threads

NLLB = "nllb"
MARIAN = "marian"
FAMILIES = (NLLB, MARIAN)

# Sentence ends: after terminal punctuation and whitespace, after CJK full stops (no space follows
# them), and at every line break.
_SENTENCE_END = re.compile(r"(?<=[.!?…।॥؟۔።])\s+|(?<=[。！？])\s*|\s*\n\s*")
# Scripts written without spaces between words or sentences.
_UNSPACED_SCRIPTS = {"Hans", "Hant", "Jpan"}
_WORD_START = "▁"  # SentencePiece marks the first piece of each word with it

# CTranslate2's DataType order in model.bin: float32, int8, int16, int32, float16, bfloat16.
_FLOAT_TYPE_IDS = {0, 4, 5}
# Bytes per element of a quantizable weight (a variable named "*weight") at each compute type.
_WEIGHT_BYTES = {
    "int8": 1, "int8_float32": 1, "int8_float16": 1, "int8_bfloat16": 1,
    "int16": 2, "float16": 2, "bfloat16": 2, "float32": 4,
}
_HALF_PRECISION = {"float16", "bfloat16", "int8_float16", "int8_bfloat16"}


@dataclass(frozen=True)
class _Segment:
    """One sequence for the translator: a whole input, or one sentence (or slice) of a long one."""

    item: int  # position of its input in the batch
    source: str  # FLORES-200 codes
    target: str
    tokens: list[str]  # source pieces, without language token or end token
    separator: str  # what joins this segment's translation to the next one of the same input


@dataclass(frozen=True)
class _Output:
    text: str
    logprob: float  # sum over the generated tokens
    tokens: int  # generated tokens, the end token included when one was produced
    ended: bool


class CTranslate2Translator(Backend):
    """A CTranslate2 `Translator` with its SentencePiece models.

    NLLB/M2M100 (`sentencepiece.bpe.model`, language tokens such as `eng_Latn` or `__en__` in the
    vocabulary): the source is `[source token] + pieces + [</s>]` and decoding is forced to start with
    the target token, so one batch can hold many language pairs. Marian/OPUS-MT (`source.spm`,
    `target.spm`) translates the one pair named by the options `source_language`/`target_language`.

    `score` is the mean log-probability of the generated tokens (the end token included, the forced
    target-language token excluded), so exp(score) is the per-token confidence; for an input split
    into sentences it is the mean over all their tokens.
    """

    name = "ctranslate2-translator"
    task = Task.TRANSLATION
    option_types: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "family": str,  # "nllb" or "marian"; detected from the files when absent
        "source_language": str,  # Marian: the pair; NLLB: the source used when a request names none
        "target_language": str,  # Marian only
        "beam_size": int,
        "max_decoding_length": int,  # generated tokens per sentence
        "max_input_tokens": int,  # longer inputs are translated sentence by sentence
        "max_characters": int,  # longer inputs are refused
        "compute_type": str,  # CTranslate2 compute type; "int8" on CPU, "float16" on CUDA by default
    }

    # --- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        path = self.config.path
        slug = self.config.slug
        if not path.is_dir():
            raise ModelLoadError(f"{slug}: no CTranslate2 model directory at {path}.")
        if not (path / "model.bin").is_file():
            raise ModelLoadError(
                f"{slug}: {path} has no CTranslate2 model.bin; convert the model with ct2-transformers-converter."
            )
        self._beam_size = self._int_option("beam_size", 2)
        self._max_decoding_length = self._int_option("max_decoding_length", 256)
        self._max_input_tokens = self._int_option("max_input_tokens", 400)
        self._max_characters = self._int_option("max_characters", 20_000)
        self._family = self._family_of(path)

        import sentencepiece

        def sentencepiece_model(name: str) -> Any:
            try:
                return sentencepiece.SentencePieceProcessor(model_file=str(path / name))
            except (OSError, RuntimeError) as exc:
                raise ModelLoadError(f"{slug}: cannot read {path / name}: {exc}") from exc

        model_config = self._read_json(path / "config.json") if (path / "config.json").is_file() else {}
        self._end_token = model_config.get("eos_token") or "</s>"
        source_vocabulary = self._read_vocabulary(path, "source")
        target_vocabulary = self._read_vocabulary(path, "target")
        self._default_source: str | None = None
        if self._family == NLLB:
            self._source_sp = self._target_sp = sentencepiece_model("sentencepiece.bpe.model")
            self._source_tokens = _language_tokens(source_vocabulary)
            self._target_tokens = _language_tokens(target_vocabulary)
            if not self._source_tokens or not self._target_tokens:
                raise ModelLoadError(
                    f"{slug}: no language tokens (such as eng_Latn or __en__) in the vocabulary of {path}; "
                    "it is not an NLLB/M2M100 model (set family to 'marian' for OPUS-MT)."
                )
            if self.option("source_language", None):
                self._default_source = self._option_language("source_language")
                if self._default_source not in self._source_tokens:
                    raise ModelLoadError(f"{slug}: source_language {self._default_source} is not in the model's vocabulary.")
            self._prefix_length = 1
        else:
            self._source_sp = sentencepiece_model("source.spm")
            self._target_sp = sentencepiece_model("target.spm")
            source = self._option_language("source_language")
            target = self._option_language("target_language")
            self._pair = (source, target)
            self._default_source = source
            self._prefix_length = 0

        import ctranslate2

        device, _, index = self.config.device.partition(":")
        compute_type = self._compute_type()
        try:
            self._translator = ctranslate2.Translator(
                str(path),
                device=device,
                device_index=int(index) if index else 0,
                compute_type=compute_type,
                inter_threads=1,  # the pool runs one batch at a time per model
                intra_threads=cpu_threads(),
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(f"{slug}: CTranslate2 cannot load {path} ({device}, {compute_type}): {exc}") from exc

    @property
    def family(self) -> str:
        self.require_loaded()
        return self._family

    @property
    def source_languages(self) -> frozenset[str]:
        """FLORES-200 codes this model translates from."""
        self.require_loaded()
        return frozenset([self._pair[0]] if self._family == MARIAN else self._source_tokens)

    @property
    def target_languages(self) -> frozenset[str]:
        """FLORES-200 codes this model translates into."""
        self.require_loaded()
        return frozenset([self._pair[1]] if self._family == MARIAN else self._target_tokens)

    def memory_estimate_mb(self) -> float:
        """The weights at the compute type (int8 weights take a quarter of float32), plus the
        allocator's cache and beam buffers CTranslate2 keeps beside them."""
        weights = _loaded_weight_bytes(self.config.path / "model.bin", self._compute_type())
        if weights is None:
            return super().memory_estimate_mb()
        return weights / 2**20 * 1.1 + 32

    def warmup_input(self) -> TranslationInput:
        if self._family == MARIAN:
            return TranslationInput(text="Hello", target=self._pair[1], source=self._pair[0])
        source = "eng_Latn" if "eng_Latn" in self._source_tokens else sorted(self._source_tokens)[0]
        preferred = ["fra_Latn", "eng_Latn", *sorted(self._target_tokens)]
        target = next((code for code in preferred if code in self._target_tokens and code != source), source)
        return TranslationInput(text="Hello", target=target, source=source)

    # --- requests --------------------------------------------------------------------------
    def validate(self, item: Any) -> TranslationInput:
        """Refuse empty or oversized text and languages the model cannot translate; returns the input
        with FLORES-200 codes (the source filled in when the model knows it)."""
        self.require_loaded()
        if not isinstance(item, TranslationInput):
            raise InvalidInput(f"Expected a TranslationInput, got {type(item).__name__}.")
        if not isinstance(item.text, str) or not item.text.strip():
            raise InvalidInput("The text to translate is empty.")
        if len(item.text) > self._max_characters:
            raise InvalidInput(
                f"The text has {len(item.text)} characters; {self.config.slug} translates at most {self._max_characters}."
            )
        target = self._supported(item.target, "target")
        if item.source is None or (isinstance(item.source, str) and not item.source.strip()):
            source = self._default_source
            if source is None:
                raise InvalidInput(
                    f"{self.config.slug} needs the source language: pass source as an ISO 639-1 or FLORES-200 code."
                )
        else:
            source = self._supported(item.source, "source")
        return TranslationInput(text=item.text, target=target, source=source)

    def infer(self, batch: list[Any]) -> list[Any]:
        self.require_loaded()
        results: list[Any] = [None] * len(batch)
        requests: list[tuple[int, TranslationInput]] = []
        for index, item in enumerate(batch):
            try:
                request = self.validate(item)
            except InvalidInput as error:
                results[index] = error
                continue
            if request.source == request.target:  # nothing to translate; the text is its own translation
                results[index] = Translation(request.text, to_iso(request.source), to_iso(request.target), 0.0)
            else:
                requests.append((index, request))

        segments = [segment for index, request in requests for segment in self._segments(index, request)]
        outputs: dict[int, list[tuple[_Segment, _Output]]] = {}
        for segment, output in zip(segments, self._translate(segments)):
            outputs.setdefault(segment.item, []).append((segment, output))

        for index, request in requests:
            parts = outputs.get(index)
            if not parts:
                results[index] = InvalidInput("The text has nothing to translate.")
                continue
            # An empty part (a sentence rendered as nothing) must not leave a double space behind.
            text = "".join(
                output.text + segment.separator
                for segment, output in parts
                if output.text or "\n" in segment.separator
            ).strip()
            tokens = sum(output.tokens for _, output in parts)
            # Token-weighted: a long sentence says more about the translation than a short one.
            score = min(0.0, sum(output.logprob for _, output in parts) / tokens) if tokens else 0.0
            results[index] = Translation(
                text=text,
                source=to_iso(request.source),
                target=to_iso(request.target),
                score=score,
                truncated=not all(output.ended for _, output in parts),
            )
        return results

    # --- internals -------------------------------------------------------------------------
    def _segments(self, index: int, request: TranslationInput) -> list[_Segment]:
        """The input as one segment, or, when it has more than `max_input_tokens` pieces, one per
        sentence (a sentence still too long is cut at word boundaries)."""
        source, target = request.source, request.target
        pieces = self._encode(request.text)
        if len(pieces) <= self._max_input_tokens:
            return [_Segment(index, source, target, pieces, "")] if pieces else []
        joiner = "" if target.split("_")[1] in _UNSPACED_SCRIPTS else " "
        segments = []
        for sentence, whitespace in _split_sentences(request.text):
            # Line breaks are the structure of the text (paragraphs, lists): keep them.
            separator = "\n" * whitespace.count("\n") or joiner
            chunks = _chunk(self._encode(sentence), self._max_input_tokens)
            for position, chunk in enumerate(chunks):
                last = position == len(chunks) - 1
                segments.append(_Segment(index, source, target, chunk, separator if last else joiner))
        return segments

    def _encode(self, text: str) -> list[str]:
        return self._source_sp.encode(text, out_type=str)

    def _translate(self, segments: list[_Segment]) -> list[_Output]:
        if not segments:
            return []
        prefix = self._prefix_length
        if self._family == NLLB:
            sources = [[self._source_tokens[s.source], *s.tokens, self._end_token] for s in segments]
            prefixes: list[list[str]] | None = [[self._target_tokens[s.target]] for s in segments]
        else:
            sources = [[*s.tokens, self._end_token] for s in segments]
            prefixes = None
        results = self._translator.translate_batch(
            sources,
            target_prefix=prefixes,
            max_batch_size=self.config.max_batch_size,  # CTranslate2 sorts by length within it: less padding
            beam_size=self._beam_size,
            length_penalty=1.0,  # the score conversion below relies on it
            max_decoding_length=self._max_decoding_length + prefix,  # the limit counts the forced prefix
            min_decoding_length=1 + prefix,
            max_input_length=0,  # never truncate silently: long inputs were split above
            return_scores=True,
            return_end_token=True,
        )
        outputs = []
        for result in results:
            generated = result.hypotheses[0][prefix:]
            ended = bool(generated) and generated[-1] == self._end_token
            # CTranslate2 scores a hypothesis as sum(log p of the generated tokens) / (prefix + generated
            # tokens) ** length_penalty; undo the division to report the mean per generated token.
            logprob = result.scores[0] * (prefix + len(generated))
            text_tokens = generated[:-1] if ended else generated
            outputs.append(_Output(self._decode(text_tokens), logprob, len(generated), ended))
        return outputs

    def _decode(self, tokens: list[str]) -> str:
        """Target pieces to text; tokens the target SentencePiece model cannot spell (language codes,
        <pad>, <mask>) are dropped, the unknown token itself is kept (it decodes as ' ⁇ ')."""
        sp = self._target_sp
        unknown = sp.unk_id()
        unknown_piece = sp.id_to_piece(unknown)
        pieces = [token for token in tokens if token == unknown_piece or sp.piece_to_id(token) != unknown]
        return sp.decode(pieces).strip()

    def _supported(self, code: Any, role: str) -> str:
        nllb = to_nllb(code)
        if self._family == MARIAN:
            expected = self._pair[0] if role == "source" else self._pair[1]
            if nllb != expected:
                source, target = self._pair
                raise InvalidInput(
                    f"{self.config.slug} translates only {to_iso(source)} → {to_iso(target)} "
                    f"({language_name(source)} to {language_name(target)}); the {role} language {code!r} "
                    f"({language_name(nllb)}) is not part of that pair."
                )
            return nllb
        known = self._source_tokens if role == "source" else self._target_tokens
        if nllb not in known:
            raise InvalidInput(
                f"{self.config.slug} cannot translate {'from' if role == 'source' else 'into'} "
                f"{language_name(nllb)} ({code!r}); it knows {len(known)} languages."
            )
        return nllb

    def _family_of(self, path: Path) -> str:
        slug = self.config.slug
        has_nllb = (path / "sentencepiece.bpe.model").is_file()
        has_marian = (path / "source.spm").is_file() and (path / "target.spm").is_file()
        family = self.option("family", None)
        if family is None:
            if has_nllb == has_marian:
                found = "both" if has_nllb else "neither"
                raise ModelLoadError(
                    f"{slug}: cannot tell the model family: {path} has {found} of sentencepiece.bpe.model "
                    "(NLLB/M2M100) and source.spm + target.spm (Marian); set the option family."
                )
            return NLLB if has_nllb else MARIAN
        if family not in FAMILIES:
            raise ModelLoadError(f"{slug}: family must be one of {', '.join(FAMILIES)}, not {family!r}.")
        if family == NLLB and not has_nllb:
            raise ModelLoadError(f"{slug}: an NLLB/M2M100 model needs sentencepiece.bpe.model in {path}.")
        if family == MARIAN and not has_marian:
            raise ModelLoadError(f"{slug}: a Marian model needs source.spm and target.spm in {path}.")
        return family

    def _option_language(self, name: str) -> str:
        value = self.option(name, None)
        if not value:
            raise ModelLoadError(f"{self.config.slug}: a Marian model translates one pair; set the option {name}.")
        try:
            return to_nllb(value)
        except InvalidInput as exc:
            raise ModelLoadError(f"{self.config.slug}: option {name}: {exc}") from None

    def _int_option(self, name: str, default: int) -> int:
        value = self.option(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelLoadError(f"{self.config.slug}: option {name} must be a positive integer, not {value!r}.")
        return value

    def _compute_type(self) -> str:
        return self.option("compute_type", "float16" if self.config.device.startswith("cuda") else "int8")

    def _read_json(self, file: Path) -> Any:
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{self.config.slug}: cannot read {file}: {exc}") from exc

    def _read_vocabulary(self, path: Path, side: str) -> list[str]:
        for stem in ("shared_vocabulary", f"{side}_vocabulary"):
            if (path / f"{stem}.json").is_file():
                return self._read_json(path / f"{stem}.json")
            if (path / f"{stem}.txt").is_file():  # the format of CTranslate2 before 3.0
                lines = (path / f"{stem}.txt").read_text(encoding="utf-8").split("\n")
                return [line.rstrip("\r") for line in lines if line]
        raise ModelLoadError(f"{self.config.slug}: no {side} vocabulary (shared_vocabulary.json) in {path}.")


def _language_tokens(vocabulary: list[str]) -> dict[str, str]:
    """FLORES-200 code → the model's token for it: NLLB uses the code itself, M2M100 `__en__`."""
    present = set(vocabulary)
    tokens = {code: code for code in NLLB_CODES if code in present}
    if tokens:
        return tokens
    for token in vocabulary:
        if len(token) > 4 and token.startswith("__") and token.endswith("__"):
            try:
                tokens.setdefault(to_nllb(token[2:-2]), token)
            except InvalidInput:
                continue  # a language outside FLORES-200: no request can name it
    return tokens


def _split_sentences(text: str) -> list[tuple[str, str]]:
    """(sentence, whitespace after it) pairs, in order; blank stretches join the previous whitespace."""
    parts: list[tuple[str, str]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        sentence = text[start : match.start()]
        if sentence.strip():
            parts.append((sentence, match.group()))
        elif parts:
            parts[-1] = (parts[-1][0], parts[-1][1] + match.group())
        start = match.end()
    if text[start:].strip():
        parts.append((text[start:], ""))
    return parts


def _chunk(pieces: list[str], limit: int) -> list[list[str]]:
    """Cut pieces into runs of at most `limit`, at a word start where one is in reach."""
    chunks = []
    while len(pieces) > limit:
        cut = next((i for i in range(limit, 0, -1) if pieces[i].startswith(_WORD_START)), limit)
        chunks.append(pieces[:cut])
        pieces = pieces[cut:]
    if pieces:
        chunks.append(pieces)
    return chunks


def _loaded_weight_bytes(model_bin: Path, compute_type: str) -> int | None:
    """Bytes the variables of a CTranslate2 model.bin take once loaded at `compute_type`, read from
    the variable headers (the data is skipped); None when the file cannot be read this way."""
    weight_bytes = _WEIGHT_BYTES.get(compute_type)  # None ("auto", "default"): kept as stored
    float_bytes = 2 if compute_type in _HALF_PRECISION else 4
    total = 0
    try:
        with model_bin.open("rb") as stream:

            def read(layout: str) -> tuple[Any, ...]:
                size = struct.calcsize(layout)
                data = stream.read(size)
                if len(data) != size:
                    raise EOFError(model_bin)
                return struct.unpack(layout, data)

            def skip_string() -> str:
                (length,) = read("<H")
                return stream.read(length)[:-1].decode("utf-8")

            (version,) = read("<I")
            if not 4 <= version <= 6:  # older layouts store no per-variable type
                return None
            skip_string()  # spec name
            read("<I")  # spec revision
            (count,) = read("<I")
            for _ in range(count):
                name = skip_string()
                (rank,) = read("<B")
                shape = read(f"<{rank}I") if rank else ()
                type_id, stored = read("<BI")
                stream.seek(stored, 1)
                elements = math.prod(shape)
                if weight_bytes is not None and rank >= 2 and name.endswith("weight"):
                    scales = shape[0] * 4 if compute_type.startswith("int") else 0  # a float scale per row
                    total += elements * weight_bytes + scales
                elif weight_bytes is not None and type_id in _FLOAT_TYPE_IDS:
                    total += elements * float_bytes
                else:
                    total += stored
    except (OSError, EOFError, struct.error, UnicodeDecodeError):
        return None
    return total
