"""Embeddings with the packaged MiniLM, and reranking with a MiniLM-backed cross-encoder built here."""
from __future__ import annotations

import numpy as np
import pytest

from inference.base import ModelConfig
from inference.embeddings import length_chunks
from inference.errors import InvalidInput, ModelLoadError
from inference.payloads import RerankInput


def test_embeddings_are_normalised_384_dimensional_with_token_counts(shared_pool, minilm_config):
    results = shared_pool.infer_many(minilm_config, ["A cat sits on the mat.", "A kitten rests on a rug.", "Quarterly tax filing deadlines"])
    vectors = np.stack([r.vector for r in results])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2  # meaning, not just characters
    assert results[0].tokens == 9  # [CLS] a cat sits on the mat . [SEP]


@pytest.mark.parametrize("text, message", [("", "empty"), ("  ", "empty"), (7, "must be a string"), ("x" * 40_000, "limit is 32768")])
def test_bad_texts_are_refused(shared_pool, minilm_config, text, message):
    with pytest.raises(InvalidInput, match=message):
        shared_pool.infer(minilm_config, text)


def test_missing_weights_fail_loudly(shared_pool, tmp_path):
    config = ModelConfig(slug="ghost", task="embeddings", backend="sentence-transformers", path=tmp_path / "ghost")
    with pytest.raises(ModelLoadError, match="weights not found"):
        shared_pool.infer(config, "hello")


def test_pickled_weights_are_refused(shared_pool, tmp_path):
    (tmp_path / "modules.json").write_text("[]")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    config = ModelConfig(slug="pickled", task="embeddings", backend="sentence-transformers", path=tmp_path)
    with pytest.raises(ModelLoadError, match="only pickled weights"):
        shared_pool.infer(config, "hello")


@pytest.fixture(scope="module")
def reranker_config(tmp_path_factory, minilm_config):
    from sentence_transformers import CrossEncoder

    path = tmp_path_factory.mktemp("cross-encoder")
    CrossEncoder(str(minilm_config.path), num_labels=1).save_pretrained(str(path))
    return ModelConfig(slug="tiny-reranker", task="rerank", backend="cross-encoder", path=path)


def test_rerank_scores_every_document_of_every_caller_in_order(shared_pool, reranker_config):
    first = RerankInput(query="cats", documents=("a cat", "tax law", "kittens"))
    second = RerankInput(query="money", documents=("bank", "river"))
    futures = shared_pool.submit_many(reranker_config, [first, second])
    one, two = (future.result(60) for future in futures)
    assert len(one.scores) == 3 and len(two.scores) == 2
    alone = shared_pool.infer(reranker_config, first)
    assert np.allclose(alone.scores, one.scores, atol=1e-4)


@pytest.mark.parametrize(
    "item, message",
    [
        (RerankInput(query="", documents=("a",)), "query is empty"),
        (RerankInput(query="q", documents=()), "no documents"),
        (RerankInput(query="q", documents=("ok", "")), "document 1 is empty"),
        (RerankInput(query="q", documents=("d",) * 1001), "limit is 1000"),
        ("just a string", "query and documents"),
    ],
)
def test_bad_rerank_input_is_refused(shared_pool, reranker_config, item, message):
    with pytest.raises(InvalidInput, match=message):
        shared_pool.infer(reranker_config, item)


def test_length_chunks_group_texts_of_about_one_length_within_both_limits():
    lengths = [5, 300, 7, 6, 120, 5, 8, 250, 9, 6]
    chunks = length_chunks(lengths, max_texts=3, max_tokens=600)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) <= 3 and len(chunk) * max(lengths[i] for i in chunk) <= 600 or len(chunk) == 1
    flat = [lengths[i] for chunk in chunks for i in chunk]
    assert flat == sorted(lengths)
    assert [[lengths[i] for i in chunk] for chunk in chunks] == [[5, 5, 6], [6, 7, 8], [9, 120], [250, 300]]
    assert length_chunks([], max_texts=32, max_tokens=4096) == []
    assert length_chunks([5000], max_texts=32, max_tokens=4096) == [[0]]  # too long for the limit: alone


def test_a_long_text_gets_a_pass_of_its_own_rather_than_padding_the_others():
    lengths = [10] * 31 + [100]
    chunks = length_chunks(lengths, max_texts=32, max_tokens=4096, pass_tokens=128)
    # One pass of 32 would run 3,200 padded tokens; 31 × 10 and 1 × 100 run 410 for one more pass.
    assert [len(chunk) for chunk in chunks] == [31, 1] and chunks[1] == [31]


def test_the_grouping_costs_least_and_prefers_fewer_passes_on_a_tie():
    import itertools

    def cost(groups):
        return sum(128 + len(g) * max(g) for g in groups)

    lengths = [3, 4, 9, 10, 11, 30, 31, 90]
    best = min(
        cost([sorted(lengths)[a:b] for a, b in zip((0, *cuts), (*cuts, len(lengths)))])
        for r in range(len(lengths))
        for cuts in itertools.combinations(range(1, len(lengths)), r)
    )
    chunks = length_chunks(lengths, max_texts=32, max_tokens=4096, pass_tokens=128)
    assert cost([[lengths[i] for i in chunk] for chunk in chunks]) == best
    assert length_chunks([7] * 8, max_texts=32, max_tokens=4096, pass_tokens=0) == [list(range(8))]


def test_chunked_embeddings_match_one_text_at_a_time_in_input_order(shared_pool, minilm_config):
    texts = ["a cat", "The quarterly report on interest rates and bonds was published this morning.", "ok",
             "A much longer sentence about the weather in the mountains, where it snowed all week long."] * 3
    together = shared_pool.infer_many(minilm_config, texts, timeout=120)
    for text, embedding in zip(texts, together):
        [alone] = shared_pool.infer_many(minilm_config, [text], timeout=120)
        assert embedding.tokens == alone.tokens
        assert np.allclose(embedding.vector, alone.vector, atol=1e-5)
