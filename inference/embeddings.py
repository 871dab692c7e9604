"""Sentence embeddings (sentence-transformers, normalised) and reranking with a cross-encoder."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from inference.base import Backend, refuse_pickled_weights
from inference.errors import InvalidInput, ModelLoadError
from inference.payloads import Embedding, RerankInput, RerankResult, Task
from inference.runtime import configure_torch

DEFAULT_MAX_CHARACTERS = 32_768


def _check_text(text: Any, limit: int, what: str = "text") -> str:
    if not isinstance(text, str):
        raise InvalidInput(f"The {what} must be a string.")
    if not text.strip():
        raise InvalidInput(f"The {what} is empty.")
    if len(text) > limit:
        raise InvalidInput(f"The {what} has {len(text)} characters; the limit is {limit}.")
    return text


def length_chunks(lengths: list[int], *, max_texts: int, max_tokens: int) -> list[list[int]]:
    """Indexes of texts grouped for forward passes: sorted by length, each pass at most `max_texts`
    texts and `max_tokens` tokens once padded to its longest. A pass over texts of mixed length
    spends most of its work on padding; one over a few short texts pays the per-pass cost for
    little (on 2 cores: MiniLM embeds ~85 sentences/s in passes of 8, ~107/s in passes of 32 of
    sorted lengths)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) >= max_texts or (len(current) + 1) * lengths[index] > max_tokens):
            chunks.append(current)
            current = []
        current.append(index)
    if current:
        chunks.append(current)
    return chunks


class SentenceTransformerEmbeddings(Backend):
    name = "sentence-transformers"
    task = Task.EMBEDDINGS
    option_types: ClassVar[dict[str, Any]] = {
        "max_characters": int, "max_seq_length": int, "encode_batch_size": int, "encode_batch_tokens": int,
    }

    def load(self) -> None:
        configure_torch()
        path = self.require_path("modules.json")
        refuse_pickled_weights(path, self.config.slug)
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(
            str(path), device=self.config.device, local_files_only=True, trust_remote_code=False
        )
        if self.option("max_seq_length", None):
            self.model.max_seq_length = int(self.option("max_seq_length", None))
        self.dimension = int(self.model.get_embedding_dimension())
        self.tokenizer = self.model.tokenizer

    def validate(self, item: Any) -> str:
        return _check_text(item, self.option("max_characters", DEFAULT_MAX_CHARACTERS))

    def infer(self, batch: list[str]) -> list[Embedding]:
        self.require_loaded()
        # Tokens counted the way the model sees them (truncated to its window), for usage and billing,
        # and to cut the batch into forward passes of texts of about one length.
        lengths = [len(ids) for ids in self.tokenizer(batch, truncation=True, max_length=self.model.max_seq_length)["input_ids"]]
        vectors = np.empty((len(batch), self.dimension), dtype=np.float32)
        for chunk in length_chunks(
            lengths, max_texts=self.option("encode_batch_size", 32), max_tokens=self.option("encode_batch_tokens", 4096)
        ):
            vectors[chunk] = self.model.encode(
                [batch[i] for i in chunk],
                batch_size=len(chunk),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [Embedding(vector=vector, tokens=count) for vector, count in zip(vectors, lengths)]

    def warmup_input(self) -> str:
        return "Hello world"


class CrossEncoderReranker(Backend):
    name = "cross-encoder"
    task = Task.RERANK
    option_types: ClassVar[dict[str, Any]] = {
        "max_characters": int, "max_documents": int, "max_length": int, "encode_batch_size": int,
    }

    def load(self) -> None:
        configure_torch()
        path = self.require_path("config.json")
        refuse_pickled_weights(path, self.config.slug)
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(
            str(path),
            device=self.config.device,
            max_length=self.option("max_length", 512),
            local_files_only=True,
            trust_remote_code=False,
        )
        if getattr(self.model, "num_labels", 1) != 1:
            raise ModelLoadError(f"{self.config.slug}: a reranker needs one output score, this model has {self.model.num_labels}.")

    def validate(self, item: Any) -> RerankInput:
        if not isinstance(item, RerankInput):
            raise InvalidInput("Reranking takes a query and documents.")
        limit = self.option("max_characters", DEFAULT_MAX_CHARACTERS)
        _check_text(item.query, limit, "query")
        max_documents = self.option("max_documents", 1000)
        if not item.documents:
            raise InvalidInput("There are no documents to rerank.")
        if len(item.documents) > max_documents:
            raise InvalidInput(f"{len(item.documents)} documents; the limit is {max_documents}.")
        for index, document in enumerate(item.documents):
            _check_text(document, limit, f"document {index}")
        return item

    def infer(self, batch: list[RerankInput]) -> list[RerankResult]:
        self.require_loaded()
        # Every (query, document) pair of every caller in one forward pass, then split back.
        pairs = [(item.query, document) for item in batch for document in item.documents]
        scores = self.model.predict(
            pairs, batch_size=self.option("encode_batch_size", 8), show_progress_bar=False, convert_to_numpy=True
        )
        results, offset = [], 0
        for item in batch:
            count = len(item.documents)
            results.append(RerankResult(scores=[float(s) for s in scores[offset : offset + count]]))
            offset += count
        return results

    def warmup_input(self) -> RerankInput:
        return RerankInput(query="hello", documents=("hello world",))
