"""The generation backends (CTranslate2 int8 and transformers) on a tiny chat model trained by the test itself."""
from __future__ import annotations

import dataclasses
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from inference.base import ModelConfig
from inference.convert import transformers_to_ctranslate2
from inference.errors import InferenceError, InvalidInput, ModelLoadError
from inference.generation import CTranslate2Generator, TransformersGenerator
from inference.payloads import GenerationStream
from inference.payloads import ChatMessage, Generation, GenerationInput
from inference.pool import ModelPool
from tests.inference.tiny_generation import REPLIES, build_tiny_chat_model, drop_chat_template

BACKENDS = ["ctranslate2-generator", "transformers-generator"]
LIMITS = {"max_input_tokens": 64, "max_tokens_limit": 40}
FRANCE = "What is the capital of France?"


def ask(question: str, *, max_tokens: int = 16, **settings) -> GenerationInput:
    return GenerationInput(messages=(ChatMessage("user", question),), max_tokens=max_tokens, **settings)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-chat")
    hf_dir = build_tiny_chat_model(root / "transformers")
    ct2_dir = transformers_to_ctranslate2(hf_dir, root / "ctranslate2")
    plain_dir = drop_chat_template(Path(shutil.copytree(ct2_dir, root / "ctranslate2-no-template")))
    return {"transformers-generator": hf_dir, "ctranslate2-generator": ct2_dir, "no-template": plain_dir}


@pytest.fixture(scope="module")
def tokenizer(model_dirs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dirs["transformers-generator"])


@pytest.fixture(scope="module")
def pool():
    pool = ModelPool(memory_budget_mb=4096)
    yield pool
    pool.shutdown()


@pytest.fixture(params=BACKENDS)
def config(request, model_dirs) -> ModelConfig:
    return ModelConfig(
        slug=f"tiny-chat-{request.param}", task="generation", backend=request.param,
        path=model_dirs[request.param], options=LIMITS, max_batch_size=8, max_wait_ms=100,
    )


def prompt_length(tokenizer, question: str) -> int:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def reply_length(tokenizer, question: str) -> int:
    return len(tokenizer(REPLIES[question], add_special_tokens=False)["input_ids"])


def test_it_answers_through_the_chat_template_with_real_token_counts(pool, config, tokenizer):
    answer = pool.infer(config, ask(FRANCE, max_tokens=32))

    assert dataclasses.replace(answer, mean_logprob=None) == Generation(
        text=REPLIES[FRANCE],
        tokens_in=prompt_length(tokenizer, FRANCE),
        tokens_out=reply_length(tokenizer, FRANCE) + 1,  # the end-of-turn token is generated too
        finish_reason="stop",
    )
    if config.backend == "ctranslate2-generator":
        # The answer's confidence: the mean log-probability of its tokens; a learned reply is a sure one.
        assert -1.0 < answer.mean_logprob <= 0.0
    else:
        assert answer.mean_logprob is None


def test_it_stops_at_max_tokens_with_finish_reason_length(pool, config, tokenizer):
    answer = pool.infer(config, ask(FRANCE, max_tokens=3))

    assert answer.finish_reason == "length"
    assert answer.tokens_out == 3
    assert answer.text == tokenizer.decode(tokenizer(REPLIES[FRANCE], add_special_tokens=False)["input_ids"][:3])


def test_an_answer_that_ends_exactly_at_max_tokens_is_a_stop(pool, config, tokenizer):
    answer = pool.infer(config, ask(FRANCE, max_tokens=reply_length(tokenizer, FRANCE) + 1))

    assert (answer.text, answer.finish_reason) == (REPLIES[FRANCE], "stop")


def test_it_cuts_the_text_at_the_first_stop_string(pool, config):
    whole = pool.infer(config, ask(FRANCE, max_tokens=32))
    cut = pool.infer(config, ask(FRANCE, max_tokens=32, stop=("France", "capital")))
    unused = pool.infer(config, ask(FRANCE, max_tokens=32, stop=("Berlin",)))

    assert cut.text == "Paris is the "
    assert cut.finish_reason == "stop"
    assert cut.tokens_out < whole.tokens_out  # generation stopped there instead of running on
    assert unused == whole


def test_greedy_answers_are_deterministic(pool, config):
    questions = [FRANCE, "Tell me something about dragons."]

    first = [pool.infer(config, ask(q, max_tokens=12)) for q in questions]
    again = [pool.infer(config, ask(q, max_tokens=12)) for q in questions]

    assert first == again


def test_a_temperature_above_zero_samples(pool, config):
    backend = pool.get(config).backend
    answers = backend.infer([ask("Tell me something about dragons.", max_tokens=8, temperature=1.5)] * 8)

    assert all(isinstance(a, Generation) and 1 <= a.tokens_out <= 8 for a in answers)
    assert len({a.text for a in answers}) > 1


def test_a_mixed_batch_gives_each_item_the_answer_it_gets_alone(pool, config):
    items = [
        ask("Say hello.", max_tokens=4),
        ask("Count to five.", max_tokens=32),
        ask(FRANCE, max_tokens=4),
        ask("Name a colour.", max_tokens=32, stop=("sky",)),
        ask("Tell me something about dragons.", max_tokens=6),
    ]
    alone = [pool.infer(config, item) for item in items]

    together = pool.get(config).backend.infer(items)  # groups by max_tokens: three model calls

    assert together == alone
    assert [a.finish_reason for a in together] == ["length", "stop", "length", "stop", "length"]
    assert together[3].text == "Blue, like the "


def test_a_failing_model_call_fails_only_the_items_of_its_group(pool, config, monkeypatch):
    backend = pool.get(config).backend
    generate = backend._generate

    def out_of_memory_at_five(prompts, items, *, max_tokens, temperature):
        if max_tokens == 5:  # what a real out-of-memory would do, which this machine cannot provoke safely
            raise RuntimeError("out of memory")
        return generate(prompts, items, max_tokens=max_tokens, temperature=temperature)

    monkeypatch.setattr(backend, "_generate", out_of_memory_at_five)
    failed, answered = backend.infer([ask(FRANCE, max_tokens=5), ask(FRANCE, max_tokens=32)])

    assert isinstance(failed, InferenceError) and "out of memory" in str(failed)
    assert answered.text == REPLIES[FRANCE]


def test_concurrent_callers_are_batched_and_each_gets_its_own_answer(pool, config):
    items = [ask(q, max_tokens=n) for q in REPLIES for n in (3, 32)]
    alone = [pool.infer(config, item) for item in items]
    batches_before = pool.stats(config.slug)["batches"]
    start = threading.Barrier(len(items))

    def call(item: GenerationInput) -> Generation:
        start.wait()
        return pool.infer(config, item, timeout=60)

    with ThreadPoolExecutor(len(items)) as executor:
        answers = list(executor.map(call, items))

    assert answers == alone
    assert pool.stats(config.slug)["batches"] - batches_before < len(items)  # some callers shared a batch


def test_streamed_pieces_join_into_the_greedy_answer(pool, config):
    backend = pool.get(config).backend
    for item in [
        ask(FRANCE, max_tokens=32),
        ask("Count to five.", max_tokens=3),
        ask("Name a colour.", max_tokens=32, stop=("sky", "noon")),
        ask("Tell me something about dragons.", max_tokens=10),
    ]:
        stream = backend.stream(item)
        assert isinstance(stream, GenerationStream) and stream.result is None
        pieces = list(stream)

        expected = pool.infer(config, item)
        assert len(pieces) > 1
        assert "".join(pieces) == expected.text
        # Same text, token counts, finish reason and confidence.
        assert dataclasses.replace(stream.result, mean_logprob=None) == dataclasses.replace(expected, mean_logprob=None)
        assert (stream.result.mean_logprob is None) == (expected.mean_logprob is None)
        if expected.mean_logprob is not None:
            assert stream.result.mean_logprob == pytest.approx(expected.mean_logprob, abs=1e-4)


def test_a_stream_can_be_closed_early(pool, config):
    backend = pool.get(config).backend
    stream = backend.stream(ask(FRANCE, max_tokens=32))

    first = next(stream)
    stream.close()

    assert REPLIES[FRANCE].startswith(first)
    assert stream.result is None
    assert pool.infer(config, ask(FRANCE, max_tokens=32)).text == REPLIES[FRANCE]


@pytest.mark.parametrize(
    "item, message",
    [
        (GenerationInput(messages=(), max_tokens=16), "messages must not be empty"),
        (GenerationInput(messages=(ChatMessage("robot", "Hi"),), max_tokens=16), "role"),
        (GenerationInput(messages=(ChatMessage("user", "  "),), max_tokens=16), "content must not be empty"),
        (ask(FRANCE, max_tokens=0), "max_tokens"),
        (ask(FRANCE, max_tokens=41), "max_tokens must be between 1 and 40"),
        (ask(FRANCE, temperature=-0.5), "temperature"),
        (ask(FRANCE, stop="France"), "stop"),
        (ask("hello " * 80), "accepts at most 64"),
        ("What is the capital of France?", "GenerationInput"),
    ],
    ids=["no-messages", "unknown-role", "empty-content", "zero-tokens", "too-many-tokens", "negative-temperature",
         "stop-not-a-list", "prompt-too-long", "not-an-input"],
)
def test_it_refuses_bad_input_before_batching(pool, config, item, message):
    with pytest.raises(InvalidInput, match=message):
        pool.infer(config, item)
    with pytest.raises(InvalidInput, match=message):
        pool.get(config).backend.stream(item)


def test_without_a_chat_template_it_writes_role_lines(pool, model_dirs, tokenizer):
    config = ModelConfig(slug="tiny-chat-plain", task="generation", backend="ctranslate2-generator", path=model_dirs["no-template"])
    messages = (ChatMessage("system", "Be brief."), ChatMessage("user", "Say hello."))

    answer = pool.infer(config, GenerationInput(messages=messages, max_tokens=4))

    plain = tokenizer("system: Be brief.\nuser: Say hello.\nassistant:")["input_ids"]
    assert answer.tokens_in == len(plain)
    assert answer.tokens_out == 4


def test_options_are_declared_for_the_registry():
    assert CTranslate2Generator.option_types["compute_type"] is str
    for backend in (CTranslate2Generator, TransformersGenerator):
        assert {"max_input_tokens", "max_tokens_limit", "repetition_penalty", "top_k"} <= set(backend.option_types)
        assert backend.task == "generation"


def test_it_refuses_to_load_a_directory_without_weights_or_with_pickles_only(pool, tmp_path, model_dirs):
    empty = ModelConfig(slug="no-weights", task="generation", backend="ctranslate2-generator", path=tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="not found"):
        pool.get(empty)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(model_dirs["transformers-generator"] / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    config = ModelConfig(slug="pickled", task="generation", backend="transformers-generator", path=pickled)
    with pytest.raises(ModelLoadError, match="pickled"):
        pool.get(config)
