"""Says what a model directory is (task, backend, suggested options) from its file names, JSON and file headers only.

It runs in commands and request paths, so it never imports torch or a model library and never reads
weights: a few JSON files and the first bytes of a weight file are enough.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Each backend serves exactly one task (the registry refuses any other pairing).
BACKEND_TASKS: dict[str, str] = {
    "ctranslate2-translator": "translation",
    "fasttext": "language_id",
    "transformers-classifier": "classification",
    "zero-shot-embeddings": "classification",
    "sentence-transformers": "embeddings",
    "cross-encoder": "rerank",
    "faster-whisper": "speech",
    "transformers-whisper": "speech",
    "whisper-intent": "intent",
    "ctranslate2-generator": "generation",
    "transformers-generator": "generation",
}

FASTTEXT_MAGIC = 793712314  # first int32 (little-endian) of every fastText .bin/.ftz
FASTTEXT_SUPERVISED = 3  # args.model: cbow=1, skipgram=2, supervised=3
FASTTEXT_ONE_VS_ALL = 4  # args.loss: hs=1, ns=2, softmax=3, ova=4 (independent labels)
GGUF_MAGIC = b"GGUF"
WHISPER_ENGLISH_VOCAB = 51864  # tiny.en … medium.en; the multilingual checkpoints have 51865 or more

# Reading caps: a config or label file is small; a vocabulary can be megabytes; a fastText dictionary
# of a few hundred thousand words is tens of megabytes. Past these we stop reading and say so.
JSON_LIMIT = 32 * 1024 * 1024
FASTTEXT_DICTIONARY_LIMIT = 64 * 1024 * 1024

LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(?:[_-][A-Za-z]{2,4})?$")
COMMON_LANGUAGES = frozenset(
    "en fr de es it pt nl ru zh ja ko ar hi tr pl sv da fi no nb cs el he id vi th uk ro hu fa bn ur ms "
    "eng fra deu spa ita por nld rus zho jpn kor ara hin tur pol swe dan fin nob ces ell heb ind vie tha ukr".split()
)
GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


class UndetectableModel(Exception):
    """The files do not match any model type a backend can serve; the message says what was found."""


@dataclass(frozen=True)
class Detection:
    task: str
    backend: str
    # Suggested ModelSpec options: only names the backend accepts (the registry validates them).
    options: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    # What else the files say, for operators and the record: labels, dimension, model file, …
    facts: dict[str, Any] = field(default_factory=dict)
    # True when the weights are served only after a conversion to CTranslate2 (transformers
    # translation models, GGUF language models), not as they are.
    needs_conversion: bool = False


def detect(path: Path) -> Detection:
    """What the model at `path` (a directory, or a single fastText/GGUF file) is, and why we think so.

    Raises UndetectableModel naming the files and configuration that were found.
    """
    path = Path(path)
    if path.is_file():
        return _detect_file(path)
    if not path.is_dir():
        raise UndetectableModel(f"{path} does not exist.")
    folder = _Folder(path)

    fasttext_files = [
        name for name in folder.names if name.endswith((".ftz", ".bin")) and _starts_with_fasttext_magic(path / name)
    ]
    if fasttext_files:
        reasons = []
        if len(fasttext_files) > 1:
            reasons.append(
                f"{len(fasttext_files)} fastText files ({', '.join(fasttext_files)}); the fasttext backend loads "
                f"one: register the file itself to choose (looked at {fasttext_files[0]})"
            )
        return _fasttext(path / fasttext_files[0], reasons=reasons)

    if "model.bin" in folder.names and folder.config is not None:
        spec = _ctranslate2_spec_name(path / "model.bin")
        vocabularies = [name for name in folder.names if re.match(r"(shared_|source_|target_)?vocabulary\.", name)]
        if spec is not None or vocabularies:
            return _ctranslate2(folder, spec=spec, vocabularies=vocabularies)

    architectures = folder.config.get("architectures") if folder.config else None
    if isinstance(architectures, str):
        architectures = [architectures]
    if architectures:
        return _transformers(folder, architecture=str(architectures[0]))

    if folder.has("modules.json") or folder.has("sentence_bert_config.json"):
        return _sentence_transformers(folder, reasons=["modules.json/sentence_bert_config.json present"])

    gguf_files = [name for name in folder.names if name.endswith(".gguf") and _starts_with(path / name, GGUF_MAGIC)]
    if gguf_files:
        return _gguf(gguf_files[0], others=gguf_files[1:], reasons=[])

    raise UndetectableModel(folder.describe())


# -- the folder ----------------------------------------------------------------------------------


class _Folder:
    """A model directory: its top-level file names and, read once, its config.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names = sorted(entry.name for entry in path.iterdir() if entry.is_file())
        config = _read_json(path / "config.json") if self.has("config.json") else None
        self.config: dict[str, Any] | None = config if isinstance(config, dict) else None

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def read_json(self, name: str) -> Any:
        return _read_json(self.path / name) if self.has(name) else None

    def describe(self) -> str:
        shown = ", ".join(self.names[:25]) + (f", … ({len(self.names) - 25} more)" if len(self.names) > 25 else "")
        found = f"files: {shown or 'none'}"
        if self.config is not None:
            architectures, model_type = self.config.get("architectures"), self.config.get("model_type")
            found += f"; config.json architectures = {architectures}, model_type = {model_type}"
        return (
            f"Cannot tell what model {self.path} holds ({found}). Recognised: transformers configs (Whisper, Marian, "
            "M2M100/NLLB, *ForSequenceClassification, *ForCausalLM, sentence-transformers), CTranslate2 directories "
            "(model.bin + config.json + vocabulary), fastText .bin/.ftz files, GGUF files."
        )


def _found(
    backend: str,
    *,
    reasons: list[str],
    options: dict[str, Any] | None = None,
    facts: dict[str, Any] | None = None,
    needs_conversion: bool = False,
) -> Detection:
    return Detection(
        task=BACKEND_TASKS[backend],
        backend=backend,
        options=options or {},
        reasons=reasons,
        facts=facts or {},
        needs_conversion=needs_conversion,
    )


# -- fastText ------------------------------------------------------------------------------------


def _detect_file(path: Path) -> Detection:
    reasons = [f"{path.name} is a single file"]
    if _starts_with_fasttext_magic(path):
        return _fasttext(path, reasons=reasons)
    if _starts_with(path, GGUF_MAGIC):
        return _gguf(path.name, others=[], reasons=reasons)
    raise UndetectableModel(f"Cannot tell what model {path} is: it is neither a fastText model nor a GGUF file.")


def _fasttext(path: Path, *, reasons: list[str]) -> Detection:
    reasons = reasons + [f"{path.name} starts with the fastText magic number {FASTTEXT_MAGIC}"]
    facts: dict[str, Any] = {"model_file": path.name}
    header = _fasttext_header(path)
    if header is None:
        reasons.append("its dictionary could not be read: language identification assumed from the file alone")
        return _found("fasttext", reasons=reasons, facts=facts)
    if header["model"] != FASTTEXT_SUPERVISED or header["nlabels"] == 0:
        raise UndetectableModel(
            f"{path} is a fastText word-vector model (unsupervised, {header['nlabels']} labels), not a classifier."
        )
    facts["multi_label"] = header["loss"] == FASTTEXT_ONE_VS_ALL
    if facts["multi_label"]:
        reasons.append("trained with loss=ova → independent scores per language (multi-label)")
    labels = header["labels"]
    if labels is None:
        reasons.append(f"{header['nlabels']} labels; the dictionary is too large to list them: language ID assumed")
        return _found("fasttext", reasons=reasons, facts=facts)
    prefix = "__label__" if all(label.startswith("__label__") for label in labels) else ""
    names = [label[len(prefix):] for label in labels]
    facts.update(labels=names, label_prefix=prefix)
    shown = ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
    if not prefix or not _are_language_codes(names):
        raise UndetectableModel(
            f"{path} is a fastText classifier whose {len(names)} labels ({shown}) are not language codes: the "
            "fasttext backend serves language identification only."
        )
    reasons.append(f"{len(names)} labels look like language codes ({shown}) → language identification")
    return _found("fasttext", reasons=reasons, facts=facts)


def _starts_with_fasttext_magic(path: Path) -> bool:
    head = _head(path, 4)
    return len(head) == 4 and struct.unpack("<i", head)[0] == FASTTEXT_MAGIC


def _fasttext_header(path: Path) -> dict[str, Any] | None:
    """fastText's args and dictionary header, and its labels when the dictionary is small enough to walk.

    Layout (fastText's Args::save and Dictionary::save): magic, version (int32); dim, ws, epoch,
    minCount, neg, wordNgrams, loss, model, bucket, minn, maxn, lrUpdateRate (int32) and t (double);
    then size, nwords, nlabels (int32), ntokens, pruneidx_size (int64); then `size` entries of
    NUL-terminated word, count (int64), type (int8: 0 word, 1 label), words first.
    """
    fixed = struct.Struct("<ii12idiiiqq")
    try:
        with path.open("rb") as stream:
            head = stream.read(fixed.size)
            if len(head) < fixed.size:
                return None
            values = fixed.unpack(head)
            size, nwords, nlabels = values[15:18]
            header: dict[str, Any] = {"loss": values[8], "model": values[9], "nlabels": nlabels, "labels": None}
            if nlabels <= 0 or size != nwords + nlabels:
                return header
            data = stream.read(1024 * 1024)
            while True:
                labels = _fasttext_labels(data, size)
                if labels is not None:
                    header["labels"] = labels
                    return header
                more = stream.read(len(data)) if len(data) < FASTTEXT_DICTIONARY_LIMIT else b""
                if not more:
                    return header
                data += more
    except OSError:
        return None


def _fasttext_labels(data: bytes, size: int) -> list[str] | None:
    """The label entries of a dictionary that starts at data[0], or None if `data` ends before it does."""
    labels: list[str] = []
    position = 0
    for _ in range(size):
        end = data.find(b"\0", position)
        if end < 0 or end + 10 > len(data):
            return None
        if data[end + 9] == 1:
            labels.append(data[position:end].decode("utf-8", "replace"))
        position = end + 10
    return labels


# -- CTranslate2 ---------------------------------------------------------------------------------


def _ctranslate2_spec_name(path: Path) -> str | None:
    """The model spec name CTranslate2 writes at the start of model.bin (binary version ≥ 2): "WhisperSpec", …"""
    head = _head(path, 96)
    if len(head) < 6:
        return None
    version, length = struct.unpack_from("<IH", head)
    if not 2 <= version <= 64 or not 2 <= length <= len(head) - 6:
        return None
    name = head[6 : 6 + length].rstrip(b"\0")
    return name.decode("ascii") if re.fullmatch(rb"[A-Za-z0-9]+Spec", name) else None


def _ctranslate2(folder: _Folder, *, spec: str | None, vocabularies: list[str]) -> Detection:
    config = folder.config or {}
    files = " + ".join(["model.bin", "config.json", *vocabularies])
    reasons = [f"{files} → CTranslate2"]
    if spec:
        reasons.append(f"model.bin header names {spec}")

    whisper_signs = [key for key in ("alignment_heads", "suppress_ids", "lang_ids") if key in config]
    if folder.has("preprocessor_config.json"):
        whisper_signs.append("preprocessor_config.json")
    if not whisper_signs and spec is None and _contains(folder.path / "tokenizer.json", b"<|startoftranscript|>"):
        whisper_signs.append("Whisper tokens in tokenizer.json")
    if spec == "WhisperSpec" or (spec is None and whisper_signs):
        if whisper_signs:
            reasons.append(f"Whisper markers: {', '.join(whisper_signs)}")
        return _whisper(folder, backend="faster-whisper", vocabulary_size=_ctranslate2_vocabulary_size(folder),
                        reasons=reasons)

    if spec == "TransformerSpec" or (spec is None and _is_ctranslate2_translator(folder, vocabularies)):
        if spec is None:
            reasons.append("source/shared vocabulary or SentencePiece files → encoder-decoder translator")
        options: dict[str, Any] = {}
        family = _ctranslate2_family(folder, vocabularies, reasons)
        if family:
            options["family"] = family
        facts = {f"{side}_spm": f"{side}.spm" for side in ("source", "target") if folder.has(f"{side}.spm")}
        return _found("ctranslate2-translator", options=options, reasons=reasons, facts=facts)

    if spec == "TransformerDecoderSpec" or (spec is None and vocabularies):
        if spec is None:
            reasons.append("a single vocabulary and no encoder or Whisper markers → decoder-only generator")
        return _found("ctranslate2-generator", reasons=reasons)

    raise UndetectableModel(
        f"{folder.path} is a CTranslate2 model of type {spec or 'unknown'}: no backend serves it "
        "(served: Whisper, encoder-decoder translators, decoder-only generators)."
    )


def _is_ctranslate2_translator(folder: _Folder, vocabularies: list[str]) -> bool:
    two_sided = any(name.startswith(("source_vocabulary", "shared_vocabulary")) for name in vocabularies)
    return two_sided or any(name.endswith(".spm") for name in folder.names)


def _ctranslate2_family(folder: _Folder, vocabularies: list[str], reasons: list[str]) -> str | None:
    if folder.has("source.spm") and folder.has("target.spm"):
        reasons.append("source.spm + target.spm → Marian (OPUS-MT)")
        return "marian"
    for name in vocabularies:
        if name.startswith(("shared_vocabulary", "target_vocabulary")) and _contains(folder.path / name, b"eng_Latn"):
            reasons.append(f"{name} has NLLB language codes (eng_Latn) → NLLB")
            return "nllb"
    reasons.append("no NLLB language codes or SentencePiece pair: family left to the backend")
    return None


def _ctranslate2_vocabulary_size(folder: _Folder) -> int | None:
    if folder.has("vocabulary.txt"):
        text = _read_text(folder.path / "vocabulary.txt")
        return None if text is None else len(text.splitlines())
    vocabulary = folder.read_json("vocabulary.json")
    return len(vocabulary) if isinstance(vocabulary, list) else None


# -- transformers --------------------------------------------------------------------------------


def _transformers(folder: _Folder, *, architecture: str) -> Detection:
    config = folder.config or {}
    reasons = [f"config.json architectures = {architecture}"]

    if architecture.startswith("Whisper"):
        vocabulary_size = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
        return _whisper(folder, backend="transformers-whisper", vocabulary_size=vocabulary_size, reasons=reasons)

    if architecture.startswith("Marian"):
        reasons.append("Marian weights: serve them after ct2-transformers-converter (copy source.spm, target.spm)")
        return _found("ctranslate2-translator", options={"family": "marian"}, reasons=reasons, needs_conversion=True)

    if architecture.startswith(("M2M100", "Nllb")):
        family = _transformers_translation_family(folder, architecture, reasons)
        reasons.append("translation weights: serve them after ct2-transformers-converter")
        options = {"family": family} if family else {}
        return _found("ctranslate2-translator", options=options, reasons=reasons, needs_conversion=True)

    if architecture.endswith("ForSequenceClassification"):
        return _sequence_classifier(folder, reasons)

    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        reasons.append("a causal language-model head → text generation")
        return _found("transformers-generator", reasons=reasons)

    if folder.has("modules.json") or folder.has("sentence_bert_config.json"):
        present = [name for name in ("modules.json", "sentence_bert_config.json") if folder.has(name)]
        reasons.append(f"{' + '.join(present)} present → sentence-transformers")
        return _sentence_transformers(folder, reasons=reasons)

    raise UndetectableModel(folder.describe())


def _transformers_translation_family(folder: _Folder, architecture: str, reasons: list[str]) -> str | None:
    if architecture.startswith("Nllb"):
        return "nllb"
    tokenizer_class = str((folder.read_json("tokenizer_config.json") or {}).get("tokenizer_class") or "")
    if tokenizer_class.startswith("Nllb"):
        reasons.append(f"tokenizer_config.json tokenizer_class = {tokenizer_class} → NLLB")
        return "nllb"
    if any(_contains(folder.path / name, b"eng_Latn") for name in ("tokenizer.json", "special_tokens_map.json")):
        reasons.append("the tokenizer has NLLB language codes (eng_Latn) → NLLB")
        return "nllb"
    reasons.append("M2M100 weights without NLLB language codes: family left to the backend")
    return None


def _sequence_classifier(folder: _Folder, reasons: list[str]) -> Detection:
    config = folder.config or {}
    id2label = config.get("id2label") if isinstance(config.get("id2label"), dict) else {}
    num_labels = config.get("num_labels") if isinstance(config.get("num_labels"), int) else len(id2label) or 2
    reasons.append(f"num_labels = {num_labels}")

    if num_labels == 1:
        marker = _cross_encoder_marker(folder)
        if marker:
            reasons.append(f"{marker} → cross-encoder for reranking")
        else:
            reasons.append("a single relevance logit and no cross-encoder marker: assumed a query-document scorer")
        return _found("cross-encoder", reasons=reasons)

    multi_label = config.get("problem_type") == "multi_label_classification"
    if multi_label:
        reasons.append("problem_type = multi_label_classification → independent labels (multi-label)")
    facts: dict[str, Any] = {}
    labels, descriptions = _labels_file(folder, reasons)
    if labels is None and id2label:
        ordered = [str(id2label[key]) for key in _by_index(id2label)]
        if all(GENERIC_LABEL.match(label) for label in ordered):
            reasons.append("id2label has only generic names (LABEL_n) and there is no labels.json")
        else:
            labels = ordered
            reasons.append(f"labels from id2label: {', '.join(labels[:8])}{' …' if len(labels) > 8 else ''}")
    if labels:
        facts["labels"] = labels
        if _are_language_codes(labels):
            reasons.append("the labels are language codes: a language identifier, served as a classifier")
    if descriptions:
        facts["label_descriptions"] = descriptions
    return _found("transformers-classifier", options={"multi_label": multi_label}, reasons=reasons, facts=facts)


def _cross_encoder_marker(folder: _Folder) -> str | None:
    config = folder.config or {}
    if (folder.read_json("config_sentence_transformers.json") or {}).get("model_type") == "CrossEncoder":
        return "config_sentence_transformers.json model_type = CrossEncoder"
    if "sentence_transformers" in config:
        return "config.json has a sentence_transformers section"
    if "sbert_ce_default_activation_function" in config:
        return "config.json has sbert_ce_default_activation_function"
    return None


def _sentence_transformers(folder: _Folder, *, reasons: list[str]) -> Detection:
    settings = folder.read_json("config_sentence_transformers.json") or {}
    model_type = settings.get("model_type") or "SentenceTransformer"
    if model_type != "SentenceTransformer":
        raise UndetectableModel(f"{folder.path} is a sentence-transformers {model_type}: no backend serves it.")
    modules = folder.read_json("modules.json")
    modules = modules if isinstance(modules, list) else []
    facts: dict[str, Any] = {}
    dimension = _embedding_dimension(folder, modules)
    if dimension:
        facts["dimension"] = dimension
    facts["normalized"] = any(str(module.get("type", "")).endswith("Normalize") for module in modules)

    labels, descriptions = _labels_file(folder, reasons)
    if labels:
        reasons.append("labels.json beside an embeddings model → zero-shot classification by label similarity")
        return _found("zero-shot-embeddings", options={"labels": descriptions or labels}, reasons=reasons, facts=facts)

    options: dict[str, Any] = {}
    max_seq_length = (folder.read_json("sentence_bert_config.json") or {}).get("max_seq_length")
    if isinstance(max_seq_length, int):
        options["max_seq_length"] = max_seq_length
    return _found("sentence-transformers", options=options, reasons=reasons, facts=facts)


def _embedding_dimension(folder: _Folder, modules: list[Any]) -> int | None:
    dimension = (folder.config or {}).get("hidden_size") or (folder.config or {}).get("d_model")
    for module in modules:
        # A Dense layer after pooling changes the output size.
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Dense") and module.get("path"):
            dense = _read_json(folder.path / str(module["path"]) / "config.json")
            if isinstance(dense, dict):
                dimension = dense.get("out_features", dimension)
    return int(dimension) if dimension else None


# -- Whisper, GGUF, labels -------------------------------------------------------------------------


def _whisper(folder: _Folder, *, backend: str, vocabulary_size: int | None, reasons: list[str]) -> Detection:
    options: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    if vocabulary_size:
        facts["multilingual"] = vocabulary_size > WHISPER_ENGLISH_VOCAB
        if facts["multilingual"]:
            reasons.append(f"vocabulary of {vocabulary_size} tokens → multilingual Whisper")
        else:
            options["language"] = "en"
            reasons.append(f"vocabulary of {vocabulary_size} tokens → English-only Whisper (language = en)")
    intent = folder.read_json("intent_labels.json")
    if intent is None:
        return _found(backend, options=options, reasons=reasons, facts=facts)

    labels = _intent_labels(intent)
    if not labels:
        raise UndetectableModel(f"{folder.path / 'intent_labels.json'} has no usable id_to_label or label_to_id table.")
    facts["labels"] = labels
    reasons.append(f"intent_labels.json present → speech+intent ({len(labels)} intents: {', '.join(labels[:5])})")
    classifier = _intent_classifier_dir(folder)
    if classifier is not None:
        options["intent_classifier_path"] = classifier
        reasons.append(f"{classifier}/ holds a sequence classifier → intent_classifier_path")
    return _found("whisper-intent", options=options, reasons=reasons, facts=facts)


def _intent_labels(data: Any) -> list[str]:
    """Labels by output index from {"id_to_label": {"0": …}} or {"label_to_id": {"…": 0}}."""
    if not isinstance(data, dict):
        return []
    try:
        if isinstance(data.get("id_to_label"), dict):
            mapping = data["id_to_label"]
            return [str(mapping[key]) for key in sorted(mapping, key=int)]
        if isinstance(data.get("label_to_id"), dict):
            mapping = data["label_to_id"]
            return [str(label) for label in sorted(mapping, key=lambda label: int(mapping[label]))]
    except (TypeError, ValueError):
        return []
    return []


def _intent_classifier_dir(folder: _Folder) -> str | None:
    for entry in sorted(folder.path.iterdir()):
        config = _read_json(entry / "config.json") if entry.is_dir() else None
        architectures = config.get("architectures") if isinstance(config, dict) else None
        if architectures and str(architectures[0]).endswith("ForSequenceClassification"):
            return entry.name
    return None


def _gguf(name: str, *, others: list[str], reasons: list[str]) -> Detection:
    reasons = reasons + [
        f"{name} starts with the GGUF magic → a quantized causal language model",
        "GGUF weights: served by CTranslate2 after conversion (GGUF → transformers → CTranslate2: gguf_to_ct2)",
    ]
    if others:
        reasons.append(f"{len(others) + 1} GGUF files; looked at {name}")
    return _found("ctranslate2-generator", reasons=reasons, facts={"gguf_file": name}, needs_conversion=True)


def _labels_file(folder: _Folder, reasons: list[str]) -> tuple[list[str] | None, dict[str, Any] | None]:
    """Labels, and descriptions if given, from labels.json.

    Accepted: ["a", "b"], {"labels": [...]}, {"0": "a", "1": "b"} or {"a": "what a means" or [phrases], …}.
    """
    data = folder.read_json("labels.json")
    if data is None:
        return None, None
    if isinstance(data, dict) and isinstance(data.get("labels"), list):
        data = data["labels"]
    labels: list[str] | None = None
    descriptions: dict[str, Any] | None = None
    if isinstance(data, list):
        labels = [str(label) for label in data]
    elif isinstance(data, dict) and data and all(str(key).isdigit() for key in data):
        labels = [str(data[key]) for key in sorted(data, key=int)]
    elif isinstance(data, dict) and data:
        labels = [str(label) for label in data]
        descriptions = {
            str(label): [str(item) for item in text] if isinstance(text, list) else str(text)
            for label, text in data.items()
        }
    if labels:
        reasons.append(f"labels.json lists {len(labels)} labels")
    return labels or None, descriptions


def _by_index(mapping: dict[str, Any]) -> list[str]:
    """The keys of an {"0": …, "1": …} table in index order (as written when they are not numbers)."""
    try:
        return sorted(mapping, key=int)
    except (TypeError, ValueError):
        return list(mapping)


def _are_language_codes(labels: list[str]) -> bool:
    if len(labels) < 2 or not all(LANGUAGE_CODE.match(label) for label in labels):
        return False
    bases = {re.split(r"[_-]", label)[0].lower() for label in labels}
    # Short lowercase labels ("buy", "yes") also match the pattern: require real, common languages.
    return len(bases & COMMON_LANGUAGES) >= 2


# -- reading files -------------------------------------------------------------------------------


def _head(path: Path, size: int) -> bytes:
    try:
        with path.open("rb") as stream:
            return stream.read(size)
    except OSError:
        return b""


def _starts_with(path: Path, magic: bytes) -> bool:
    return _head(path, len(magic)) == magic


def _read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > JSON_LIMIT:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _contains(path: Path, needle: bytes) -> bool:
    """Whether the file (read in chunks, up to JSON_LIMIT) contains `needle`."""
    try:
        with path.open("rb") as stream:
            carried = b""
            read = 0
            while read < JSON_LIMIT:
                chunk = stream.read(1024 * 1024)
                if not chunk:
                    return False
                if needle in carried + chunk:
                    return True
                carried = chunk[-len(needle) :]
                read += len(chunk)
    except OSError:
        return False
    return False
