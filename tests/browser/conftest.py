"""Browser tests drive Debian's Chromium through Playwright against a live server of this process, whose
local models run in the session's model server and whose premium provider is the loopback fake.

Chromium is required: without it these tests fail with how to get it. A developer without it opts out
explicitly with MODELGATE_BROWSER_TESTS=skip (CI never sets it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import soundfile

from tests.routing.conftest import FIXTURES, chat_model  # noqa: F401  (a fixture, re-exported)
from tests.routing.fake_providers import fake_providers  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / ".artifacts" / "screenshots"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
HOW_TO_GET_CHROMIUM = (
    "The browser tests need Chromium, and Playwright cannot download its own browsers here. Install Debian's: "
    "`sudo apt-get install -y chromium` (or set MODELGATE_CHROMIUM to a Chromium binary). "
    "To run the suite without them, set MODELGATE_BROWSER_TESTS=skip."
)


def chromium_executable() -> str | None:
    explicit = os.environ.get("MODELGATE_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    return required_chromium()


def required_chromium() -> str:
    """The Chromium to drive; fails (never skips) without one, unless MODELGATE_BROWSER_TESTS=skip."""
    choice = os.environ.get("MODELGATE_BROWSER_TESTS", "run").strip().lower()
    if choice == "skip":
        pytest.skip("MODELGATE_BROWSER_TESTS=skip: browser tests skipped on request.")
    if choice != "run":
        pytest.fail(f"MODELGATE_BROWSER_TESTS is 'run' (the default) or 'skip'; got {choice!r}.", pytrace=False)
    executable = chromium_executable()
    if executable is None:
        pytest.fail(HOW_TO_GET_CHROMIUM, pytrace=False)
    return executable


@pytest.fixture(scope="module")
def microphone_clip(tmp_path_factory) -> Path:
    """What Chromium's fake microphone hears: a real spoken sentence ("search for running shoes"), as the
    16-bit WAV its fake capture device reads."""
    samples, rate = soundfile.read(FIXTURES / "search_en.flac", dtype="int16")
    path = tmp_path_factory.mktemp("microphone") / "search_en.wav"
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return path


WARM_MODELS = ("lid-176", "minilm-l6", "whisper-tiny-en")  # what the playground's tasks load first


def load_starter_models(slugs: tuple[str, ...]) -> None:
    from inference.client import Fleet
    from registry import services as registry_services
    from registry.models import ModelSpec

    configs = [ModelSpec(**fields).to_config() for fields in registry_services.starter_pack() if fields["slug"] in slugs]
    pool = Fleet(list(registry_services.get_pool().servers))  # no placement: that is read from the database
    for config in configs:
        pool.load(config)


def import_provider_sdks() -> None:
    """The provider SDKs load on a premium model's first call: seconds of pydantic models being built."""
    import anthropic  # noqa: F401
    import openai  # noqa: F401


BUILD_CHAT_MODEL = """
import sys
from pathlib import Path
from inference.convert import transformers_to_ctranslate2
from tests.inference.tiny_generation import build_tiny_chat_model
root = Path(sys.argv[1])
print(transformers_to_ctranslate2(build_tiny_chat_model(root / "hf"), root / "ct2"))
"""


def build_chat_model(root: Path) -> Path:
    """The routing tests' tiny chat model, built in a process of its own: torch and the converter then
    take another core rather than this process's interpreter, which serves the pages meanwhile."""
    done = subprocess.run([sys.executable, "-c", BUILD_CHAT_MODEL, str(root)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "platform")])})
    if done.returncode != 0:
        raise RuntimeError(f"Building the tiny chat model failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def warm(model_server, tmp_path_factory) -> Iterator[dict[str, Future]]:
    """What the pages need that takes seconds — the starter models loaded in the model server (another
    process), the provider SDKs imported, the tiny chat model built — made in the background while
    Chromium starts and the first pages run, instead of one after another inside the tests."""
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="warm") as executor:
        work = {"models": executor.submit(load_starter_models, WARM_MODELS), "sdks": executor.submit(import_provider_sdks),
                "chat": executor.submit(build_chat_model, tmp_path_factory.mktemp("chat"))}
        yield work
        work["models"].result(timeout=300)  # a failure shows here, not only as slower tests
        work["sdks"].result(timeout=300)


@pytest.fixture(scope="module")
def chat_dir(warm: dict[str, Future]) -> Path:
    """The routing tests' tiny chat model (tests/routing/conftest.py `chat_model` uses it), built in the background."""
    return warm["chat"].result(timeout=300)


@pytest.fixture(scope="module")
def browser(chromium: str, microphone_clip: Path, warm: dict[str, Future]) -> Iterator:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # a shared CI machine may be slow; a wrong page still fails on its text

    # Playwright's sync API keeps an asyncio loop on this thread; Django would take the ORM calls of the
    # fixtures around these tests (and pytest-django's flush) for calls from async code and refuse them.
    # The server under test runs in its own thread and keeps the check.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium,
                args=[
                    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={microphone_clip}%noloop",
                ],
            )
            yield browser
            browser.close()


@pytest.fixture
def page(browser, live_server, request) -> Iterator:
    """A fresh browser context (its own sessionStorage and cookies) per test; a screenshot of the page as
    the test left it goes to .artifacts/screenshots/<test>.png, passed or failed."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
    page.on("pageerror", lambda error: page.console_errors.append(str(error)))
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    finally:
        context.close()
