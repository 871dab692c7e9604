"""Chat and text generation with causal language models (CTranslate2 or transformers), batched or streamed."""
from __future__ import annotations

import logging
import math
import queue
import threading
from abc import abstractmethod
from collections.abc import Generator
from typing import Any, ClassVar

from inference.base import Backend, refuse_pickled_weights
from inference.errors import InferenceError, InvalidInput, ModelLoadError
from inference.payloads import ChatMessage, Generation, GenerationInput, GenerationStream, Task
from inference.runtime import configure_torch, cpu_threads

logger = logging.getLogger("modelgate.inference")

ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 2.0

_COMMON_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "max_input_tokens": int,  # longer prompts are refused in validate (default 2048)
    "max_tokens_limit": int,  # the most a request may ask for (default 1024)
    "repetition_penalty": (int, float),  # > 1 discourages repeats (default 1.0: off)
    "top_k": int,  # candidates kept when sampling, i.e. temperature > 0 (default 50)
}


class _Detokenizer:
    """Decodes generated ids as they arrive, spots stop strings, and releases only text that is final:
    never the start of a possible stop string, never half of a multi-byte character."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.released = 0  # characters handed out so far
        self.stopped = False

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        # Decoding the whole answer each time (not token by token) keeps spaces and merged bytes right.
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""  # a character split across tokens: wait for its other bytes
        cut = _first_stop(text, self.stop)
        if cut is not None:
            self.stopped = True
            text = text[:cut]
            final = len(text)
        else:
            final = len(text) - _partial_stop_length(text, self.stop)
        piece = text[self.released : final]
        self.released = max(self.released, final)
        return piece


def _first_stop(text: str, stop: tuple[str, ...]) -> int | None:
    found = [index for index in (text.find(s) for s in stop) if index != -1]
    return min(found) if found else None


def _partial_stop_length(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    longest = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:size]):
                longest = size
                break
    return longest


class _GenerationBackend(Backend):
    """What both generators share: prompts from chat templates, validation, grouping, stop strings, streaming."""

    task: ClassVar[str] = Task.GENERATION
    option_types: ClassVar[dict[str, type | tuple[type, ...]]] = dict(_COMMON_OPTIONS)

    tokenizer: Any
    eos_ids: list[int]

    # --- to implement ----------------------------------------------------------------------
    @abstractmethod
    def _generate(self, prompts: list[list[int]], items: list[GenerationInput], *, max_tokens: int, temperature: float) -> list[Generation]:
        """One model call for items that share max_tokens and temperature."""

    @abstractmethod
    def _stream_ids(self, prompt: list[int], item: GenerationInput, logprobs: list[float]) -> Generator[int, None, None]:
        """Generated token ids one at a time (the end token included); closing it stops the model."""

    # --- the contract ----------------------------------------------------------------------
    def validate(self, item: Any) -> GenerationInput:
        self.require_loaded()
        if not isinstance(item, GenerationInput):
            raise InvalidInput(f"Expected a GenerationInput, got {type(item).__name__}.")
        if not item.messages:
            raise InvalidInput("messages must not be empty.")
        for index, message in enumerate(item.messages):
            if not isinstance(message, ChatMessage):
                raise InvalidInput(f"messages[{index}] is not a chat message.")
            if message.role not in ROLES:
                raise InvalidInput(f"messages[{index}].role is {message.role!r}; expected one of {', '.join(ROLES)}.")
            if not isinstance(message.content, str) or not message.content.strip():
                raise InvalidInput(f"messages[{index}].content must not be empty.")
        limit = self.option("max_tokens_limit", 1024)
        if isinstance(item.max_tokens, bool) or not isinstance(item.max_tokens, int) or not 1 <= item.max_tokens <= limit:
            raise InvalidInput(f"max_tokens must be between 1 and {limit}, not {item.max_tokens!r}.")
        temperature = item.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE
        ):
            raise InvalidInput(f"temperature must be between 0 and {MAX_TEMPERATURE}, not {temperature!r}.")
        if not isinstance(item.stop, (tuple, list)) or not all(isinstance(s, str) and s for s in item.stop):
            raise InvalidInput("stop must be a list of non-empty strings.")
        prompt_tokens = len(self.prompt_ids(item))
        max_input = self.option("max_input_tokens", 2048)
        if prompt_tokens > max_input:
            raise InvalidInput(f"The prompt is {prompt_tokens} tokens long; this model accepts at most {max_input}.")
        return item

    def warmup_input(self) -> GenerationInput:
        return GenerationInput(messages=(ChatMessage("user", "Hello"),), max_tokens=1)

    def infer(self, batch: list[GenerationInput]) -> list[Generation | InferenceError]:
        self.require_loaded()
        results: list[Generation | InferenceError | None] = [None] * len(batch)
        prompts: dict[int, list[int]] = {}
        # Sampling settings and the length limit apply to a whole model call, so each
        # (max_tokens, temperature) pair makes one call; stop strings are handled per item.
        groups: dict[tuple[int, float], list[int]] = {}
        for index, item in enumerate(batch):
            try:
                prompts[index] = self.prompt_ids(item)
            except InferenceError as exc:
                results[index] = exc
                continue
            groups.setdefault((item.max_tokens, float(item.temperature)), []).append(index)
        for (max_tokens, temperature), indexes in groups.items():
            try:
                outputs: list[Generation | InferenceError] = list(
                    self._generate(
                        [prompts[i] for i in indexes], [batch[i] for i in indexes], max_tokens=max_tokens, temperature=temperature
                    )
                )
            except Exception as exc:  # one failing call must not take the other groups of the batch down
                logger.exception("generation failed", extra={"model": self.config.slug, "batch_size": len(indexes)})
                error = exc if isinstance(exc, InferenceError) else InferenceError(f"{self.config.slug}: generation failed: {exc}")
                outputs = [error] * len(indexes)
            for index, output in zip(indexes, outputs):
                results[index] = output
        return results  # type: ignore[return-value]

    def stream(self, item: GenerationInput) -> GenerationStream:
        """Generate one answer piece by piece, outside the batching queue. Raises InvalidInput at once."""
        item = self.validate(item)
        return GenerationStream(self._stream_pieces(item))

    # --- shared machinery ------------------------------------------------------------------
    def prompt_ids(self, item: GenerationInput) -> list[int]:
        """The prompt as the model expects it: its own chat template, or plain "role: content" lines without one."""
        messages = [{"role": m.role, "content": m.content} for m in item.messages]
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # templates raise their own errors (e.g. "roles must alternate")
                raise InvalidInput(f"The model's chat template refused these messages: {exc}") from exc
            # The template already wrote the special tokens (BOS included) the model was trained with.
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        text = "\n".join(f"{m.role}: {m.content}" for m in item.messages) + "\nassistant:"
        return self.tokenizer(text)["input_ids"]

    def _complete(self, prompt_tokens: int, ids: list[int], item: GenerationInput, mean_logprob: float | None = None) -> Generation:
        """The Generation for generated `ids`; tokens_out counts every token produced, the end token included."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = _first_stop(text, item.stop)
        if cut is not None:
            return Generation(text=text[:cut], tokens_in=prompt_tokens, tokens_out=len(ids), finish_reason="stop",
                              mean_logprob=mean_logprob)
        ended = bool(ids) and ids[-1] in self.eos_ids
        return Generation(text=text, tokens_in=prompt_tokens, tokens_out=len(ids), finish_reason="stop" if ended else "length",
                          mean_logprob=mean_logprob)

    def _stream_pieces(self, item: GenerationInput) -> Generator[str, None, Generation]:
        self.require_loaded()
        prompt = self.prompt_ids(item)
        detokenizer = _Detokenizer(self.tokenizer, item.stop)
        logprobs: list[float] = []  # filled by backends that report each token's log-probability
        token_ids = self._stream_ids(prompt, item, logprobs)
        try:
            for token_id in token_ids:
                piece = detokenizer.add(token_id)
                if piece:
                    yield piece
                if detokenizer.stopped:
                    break
        finally:
            token_ids.close()
        result = self._complete(len(prompt), detokenizer.ids, item,
                                mean_logprob=sum(logprobs) / len(logprobs) if logprobs else None)
        rest = result.text[detokenizer.released :]
        if rest:
            yield rest
        return result

    def _read_eos_ids(self) -> list[int]:
        """End tokens: the model's generation config may list several (chat models often end turns differently)."""
        from transformers import GenerationConfig

        eos: Any = None
        if (self.config.path / "generation_config.json").is_file():
            eos = GenerationConfig.from_pretrained(self.config.path, local_files_only=True).eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return []
        return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]

    def _load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.config.path, local_files_only=True, trust_remote_code=False)
        except Exception as exc:
            raise ModelLoadError(f"{self.config.slug}: no usable tokenizer in {self.config.path}: {exc}") from exc
        self.eos_ids = self._read_eos_ids()


class CTranslate2Generator(_GenerationBackend):
    """A causal LM converted to CTranslate2 (int8 by default), with its tokenizer files beside model.bin."""

    name: ClassVar[str] = "ctranslate2-generator"
    option_types: ClassVar[dict[str, type | tuple[type, ...]]] = {**_COMMON_OPTIONS, "compute_type": str}

    def load(self) -> None:
        import ctranslate2

        path = self.require_path("model.bin", "config.json")
        self._load_tokenizer()
        self.generator = ctranslate2.Generator(
            str(path), device=self.config.device, compute_type=self.option("compute_type", "int8"), intra_threads=cpu_threads()
        )

    def _settings(self, temperature: float) -> dict[str, Any]:
        settings: dict[str, Any] = {"repetition_penalty": float(self.option("repetition_penalty", 1.0))}
        if self.eos_ids:
            settings["end_token"] = list(self.eos_ids)
        if temperature > 0:
            settings.update(sampling_topk=self.option("top_k", 50), sampling_temperature=temperature)
        else:
            settings["sampling_topk"] = 1  # greedy
        return settings

    def _generate(self, prompts: list[list[int]], items: list[GenerationInput], *, max_tokens: int, temperature: float) -> list[Generation]:
        detokenizers = [_Detokenizer(self.tokenizer, item.stop) if item.stop else None for item in items]

        def on_token(step: Any) -> bool:
            # Stop an item as soon as its stop string appears instead of running to max_tokens.
            detokenizer = detokenizers[step.batch_id]
            if detokenizer is None:
                return False
            detokenizer.add(step.token_id)
            return detokenizer.stopped

        results = self.generator.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(prompt) for prompt in prompts],
            max_length=max_tokens,
            include_prompt_in_result=False,
            return_end_token=True,
            # The score of a generated sequence is its mean log-probability per token: the answer's confidence.
            return_scores=True,
            callback=on_token if any(detokenizers) else None,
            **self._settings(temperature),
        )
        return [
            self._complete(len(prompt), list(result.sequences_ids[0]), item,
                           mean_logprob=float(result.scores[0]) if result.scores else None)
            for prompt, item, result in zip(prompts, items, results)
        ]

    def _stream_ids(self, prompt: list[int], item: GenerationInput, logprobs: list[float]) -> Generator[int, None, None]:
        steps = self.generator.generate_tokens(
            self.tokenizer.convert_ids_to_tokens(prompt), max_length=item.max_tokens, return_log_prob=True,
            **self._settings(float(item.temperature)),
        )
        try:
            for step in steps:
                logprobs.append(step.log_prob)
                yield step.token_id
        finally:
            steps.close()  # tells CTranslate2 to stop decoding


class TransformersGenerator(_GenerationBackend):
    """A transformers causal LM from safetensors, in float32 on the CPU: the reference the CTranslate2 copy is measured against."""

    name: ClassVar[str] = "transformers-generator"

    def load(self) -> None:
        configure_torch()
        import torch
        from transformers import AutoModelForCausalLM

        path = self.require_path("config.json")
        refuse_pickled_weights(path, self.config.slug)
        if not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"{self.config.slug}: no safetensors weights in {path}.")
        self._load_tokenizer()
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, use_safetensors=True, local_files_only=True, trust_remote_code=False
        ).to(self.config.device)
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

    def _generation_config(self, max_tokens: int, temperature: float) -> Any:
        from transformers import GenerationConfig

        settings: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "repetition_penalty": float(self.option("repetition_penalty", 1.0)),
            "eos_token_id": list(self.eos_ids) or None,
            "pad_token_id": self.pad_id,
        }
        if temperature > 0:
            settings.update(do_sample=True, temperature=temperature, top_k=self.option("top_k", 50))
        else:
            settings.update(do_sample=False)
        return GenerationConfig(**settings)

    def _generate(self, prompts: list[list[int]], items: list[GenerationInput], *, max_tokens: int, temperature: float) -> list[Generation]:
        import torch
        from transformers import StoppingCriteriaList

        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            # Left padding: every row's next token then lands in the same column.
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        stops = _StopStrings(self.tokenizer, [item.stop for item in items], width, self.eos_ids)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention_mask.to(self.model.device),
                generation_config=self._generation_config(max_tokens, temperature),
                stopping_criteria=StoppingCriteriaList([stops]) if stops.active else None,
            )
        generations = []
        for row, (prompt, item) in enumerate(zip(prompts, items)):
            ids = output[row, width:].tolist()
            end = stops.stopped_at[row]
            if end is None:
                end = next((i + 1 for i, token in enumerate(ids) if token in self.eos_ids), len(ids))
            generations.append(self._complete(len(prompt), ids[:end], item))
        return generations

    def _stream_ids(self, prompt: list[int], item: GenerationInput, logprobs: list[float]) -> Generator[int, None, None]:
        import torch
        from transformers import StoppingCriteriaList

        streamer = _TokenQueue()
        cancel = _Cancelled()

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        input_ids=torch.tensor([prompt], dtype=torch.long, device=self.model.device),
                        attention_mask=torch.ones((1, len(prompt)), dtype=torch.long, device=self.model.device),
                        generation_config=self._generation_config(item.max_tokens, float(item.temperature)),
                        stopping_criteria=StoppingCriteriaList([cancel]),
                        streamer=streamer,
                    )
            except Exception as exc:  # handed to the reading thread, which raises it to the caller
                streamer.tokens.put(exc)
            finally:
                streamer.tokens.put(None)

        thread = threading.Thread(target=run, name=f"stream:{self.config.slug}", daemon=True)
        thread.start()
        try:
            while (token := streamer.tokens.get()) is not None:
                if isinstance(token, BaseException):
                    raise InferenceError(f"{self.config.slug}: generation failed: {token}") from token
                yield token
        finally:
            cancel.event.set()
            thread.join()


class _StopStrings:
    """transformers stopping criterion: ends each row at its own first stop string, and remembers where."""

    def __init__(self, tokenizer: Any, stops: list[tuple[str, ...]], prompt_width: int, eos_ids: list[int]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.prompt_width = prompt_width
        self.eos_ids = set(eos_ids)
        self.active = any(stops)
        self.stopped_at: list[int | None] = [None] * len(stops)
        self.ended = [False] * len(stops)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        for row, stop in enumerate(self.stops):
            if not stop or self.ended[row]:
                continue
            generated = input_ids[row, self.prompt_width :].tolist()
            if generated and generated[-1] in self.eos_ids:
                self.ended[row] = True  # ended on its own; what follows is padding
                continue
            if _first_stop(self.tokenizer.decode(generated, skip_special_tokens=True), stop) is not None:
                self.ended[row] = True
                self.stopped_at[row] = len(generated)
        done = [at is not None for at in self.stopped_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _Cancelled:
    """transformers stopping criterion for a stream whose reader went away."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _TokenQueue:
    """transformers streamer that hands generated ids to another thread (TextIteratorStreamer hands text,
    which loses the token counts and the ids needed to find stop strings reliably)."""

    def __init__(self) -> None:
        self.tokens: queue.Queue[int | BaseException | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first sends the prompt itself
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.tokens.put(int(token))

    def end(self) -> None:
        pass  # the generating thread marks the end itself, after errors too
