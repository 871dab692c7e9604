"""A tiny Llama chat model that learns four fixed answers in a few seconds: real weights, real tokenizer, no network."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# What the model is taught to answer, word for word; any other question gets whatever it makes of it.
REPLIES: dict[str, str] = {
    "Say hello.": "Hello there, my good friend!",
    "What is the capital of France?": "Paris is the capital of France.",
    "Count to five.": "one two three four five",
    "Name a colour.": "Blue, like the sky at noon.",
}

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Extra text for the tokenizer, so that words outside the replies still get a few merges.
_FILLER = (
    "The quick brown fox jumps over the lazy dog. A model answers questions about the weather, "
    "numbers, colours and cities. Good morning, good evening, thank you very much."
)


def _train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
    )


def build_tiny_chat_model(directory: Path, *, steps: int = 120) -> Path:
    """Train the model on REPLIES, check that it learned them, save it (safetensors + tokenizer); returns `directory`."""
    import torch
    from transformers import LlamaConfig

    directory = Path(directory)
    conversations = [[{"role": "user", "content": q}] for q in REPLIES]
    tokenizer = _train_tokenizer([*REPLIES, *REPLIES.values(), _FILLER])
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
    )
    examples = []
    for conversation, reply in zip(conversations, REPLIES.values()):
        prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [eos]
        examples.append((prompt_ids, reply_ids))
    width = max(len(p) + len(r) for p, r in examples)
    input_ids = torch.full((len(examples), width), tokenizer.pad_token_id)
    labels = torch.full((len(examples), width), -100)  # learn the answers only, not the questions
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (prompt_ids, reply_ids) in enumerate(examples):
        ids = prompt_ids + reply_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(prompt_ids) : len(ids)] = torch.tensor(reply_ids)
        mask[row, : len(ids)] = 1

    threads = torch.get_num_threads()
    # One thread: matrices this small gain nothing from two, and lose a lot when the cores are busy.
    torch.set_num_threads(1)
    try:
        model = _train(config, input_ids, mask, labels, steps)
        _check_answers(model, examples, eos, tokenizer.pad_token_id)
    finally:
        torch.set_num_threads(threads)

    directory.mkdir(parents=True, exist_ok=True)
    model.generation_config.do_sample = False
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _train(
    config: LlamaConfig, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, steps: int
) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same weights every build
        model = LlamaForCausalLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(steps):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _check_answers(model: LlamaForCausalLM, examples: list[tuple[list[int], list[int]]], eos: int, pad: int) -> None:
    import torch

    for prompt_ids, reply_ids in examples:
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=len(reply_ids) + 2, do_sample=False,
                eos_token_id=eos, pad_token_id=pad,
            )
        if out[0, len(prompt_ids) :].tolist() != reply_ids:
            raise RuntimeError("The tiny chat model did not learn its answers; train it for more steps.")


def drop_chat_template(directory: Path) -> Path:
    """Remove the chat template from a saved tokenizer, for the plain-prompt fallback."""
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config, indent=2))
    return directory
