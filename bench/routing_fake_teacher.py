"""The premium teacher of bench_routing.py: the tests' fake OpenAI server (a real HTTP server on 127.0.0.1,
reached through the official SDK as the product calls it), answering every language-ID prompt with the
true language of the text it is asked about — a teacher that is always right, at the spec's token prices."""
from __future__ import annotations

import json

from tests.routing.fake_providers import FakeProviderServer, RecordedRequest, _Behaviour, words


class TeacherServer(FakeProviderServer):
    """Knows the language of every text of the stream (`truth`: text → language code) and names it in the
    JSON routing.prompts.identify_language asks for. Counts requests instead of keeping them."""

    def __init__(self, truth: dict[str, str]) -> None:
        super().__init__()
        self.truth = truth
        self.answered = 0
        self.unknown: list[str] = []  # texts it was asked about and does not know: the benchmark fails on any
        self.system_words: int | None = None  # tokens of the instructions, as the fake counts them (words)

    def _take(self, request: RecordedRequest) -> tuple[_Behaviour, str]:
        body = request.body if isinstance(request.body, dict) else {}
        messages = body.get("messages") or []
        text = messages[-1].get("content", "") if messages else ""
        language = self.truth.get(text)
        with self._lock:
            self.answered += 1
            if self.system_words is None and len(messages) > 1:
                self.system_words = words(messages[0].get("content", ""))
            if language is None:
                self.unknown.append(text[:80])
        # An unknown text gets an answer the product refuses (not JSON): a wrong setup shows as errors.
        return self._behaviour, json.dumps({"language": language}) if language else "I do not know."
