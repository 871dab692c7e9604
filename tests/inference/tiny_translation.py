"""Tiny random-weight translation models in CTranslate2 format, built in about a second without a network."""
from __future__ import annotations

import io
import json
import random
import warnings
from collections.abc import Sequence
from pathlib import Path

NLLB_LANGUAGES = ("eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "swh_Latn", "zho_Hans")
M2M100_LANGUAGES = ("__en__", "__fr__", "__de__")

# Real words so that "Hello" and test sentences tokenize into known pieces, plus made-up ones.
_WORDS = "hello world the cat sat on a mat this is one sentence two three four five good morning".split()


def _corpus(seed: int, syllables: Sequence[str], lines: int = 2000) -> list[str]:
    rng = random.Random(seed)
    words = _WORDS + ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize() + rng.choice(".!?")
        for _ in range(lines)
    ]


def _train_sentencepiece(lines: list[str], vocab_size: int, *, eos: bool) -> bytes:
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=1 if eos else -1, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2,
    )
    return model.getvalue()


def _pieces(model: bytes) -> list[str]:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def _save_and_convert(model_class: type, config: object, hf_dir: Path, out_dir: Path, copy_files: list[str]) -> Path:
    import torch
    from ctranslate2.converters import TransformersConverter

    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same weights every build: outputs are reproducible across runs
        model_class(config).save_pretrained(hf_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tokenizer hints (sacremoses) that do not apply here
        TransformersConverter(str(hf_dir), copy_files=copy_files).convert(str(out_dir), force=True)
    return out_dir


def build_tiny_nllb(directory: Path, *, language_tokens: Sequence[str] = NLLB_LANGUAGES) -> Path:
    """An NLLB-style model (one `sentencepiece.bpe.model`, language tokens in the shared vocabulary:
    FLORES-200 codes, or M2M100's `__en__` form), converted to CTranslate2; returns its directory.

    The vocabulary follows fairseq's order (<s>, <pad>, </s>, <unk>, pieces, language codes, <mask>).
    transformers' NllbTokenizer no longer reads SentencePiece files, so the converter is given a plain
    word-level tokenizer with the same vocabulary: it only reads the token order and special tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, PreTrainedTokenizerFast

    directory = Path(directory)
    hf_dir = directory / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    sp_model = _train_sentencepiece(_corpus(0, ["ka", "lo", "mi", "ne", "ru", "ta", "po", "si", "ve", "du"]), 120, eos=False)
    (hf_dir / "sentencepiece.bpe.model").write_bytes(sp_model)

    pieces = [piece for piece in _pieces(sp_model) if piece != "<unk>"]
    vocabulary = ["<s>", "<pad>", "</s>", "<unk>", *pieces, *language_tokens, "<mask>"]
    word_level = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocabulary)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=word_level, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>", additional_special_tokens=list(language_tokens),
    ).save_pretrained(hf_dir)

    config = M2M100Config(
        vocab_size=len(vocabulary), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=1024, scale_embedding=True,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
    )
    return _save_and_convert(M2M100ForConditionalGeneration, config, hf_dir, directory / "ct2", ["sentencepiece.bpe.model"])


def build_tiny_marian(directory: Path, *, source_language: str = "en", target_language: str = "fr") -> Path:
    """A Marian/OPUS-MT-style model (separate `source.spm` and `target.spm`, one shared vocabulary),
    converted to CTranslate2; returns its directory.

    The converter drops the last vocabulary entry (Marian's <pad>, which CTranslate2 replaces by
    starting the decoder from a zero embedding), so <pad> is the last id and the decoder start token.
    """
    from transformers import MarianConfig, MarianMTModel

    directory = Path(directory)
    hf_dir = directory / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    source_model = _train_sentencepiece(_corpus(1, ["ka", "lo", "mi", "ne", "ru", "ta", "po", "si"]), 100, eos=True)
    target_model = _train_sentencepiece(_corpus(2, ["ve", "du", "ha", "jo", "bel", "tor", "min", "sha"]), 100, eos=True)
    (hf_dir / "source.spm").write_bytes(source_model)
    (hf_dir / "target.spm").write_bytes(target_model)

    pieces: list[str] = []
    for piece in _pieces(source_model) + _pieces(target_model):
        if piece not in ("<unk>", "</s>") and piece not in pieces:
            pieces.append(piece)
    vocabulary = ["</s>", "<unk>", *pieces, "<pad>"]
    (hf_dir / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary)}), encoding="utf-8")
    (hf_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "MarianTokenizer", "source_lang": source_language, "target_lang": target_language}),
        encoding="utf-8",
    )

    pad = len(vocabulary) - 1
    config = MarianConfig(
        vocab_size=len(vocabulary), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=1024, eos_token_id=0, forced_eos_token_id=0,
        pad_token_id=pad, decoder_start_token_id=pad,
    )
    return _save_and_convert(MarianMTModel, config, hf_dir, directory / "ct2", ["source.spm", "target.spm"])
