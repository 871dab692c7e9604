"""Without Chromium the browser tests fail and say how to get it; only MODELGATE_BROWSER_TESTS=skip skips them."""
from __future__ import annotations

import pytest

from tests.browser.conftest import required_chromium


def test_without_chromium_the_browser_tests_fail_saying_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv("MODELGATE_BROWSER_TESTS", raising=False)
    monkeypatch.delenv("MODELGATE_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium.*MODELGATE_BROWSER_TESTS=skip"):
        required_chromium()


def test_a_chromium_named_by_the_environment_must_exist(monkeypatch, tmp_path):
    monkeypatch.delenv("MODELGATE_BROWSER_TESTS", raising=False)
    monkeypatch.setenv("MODELGATE_CHROMIUM", str(tmp_path / "no-such-chromium"))
    with pytest.raises(pytest.fail.Exception, match="need Chromium"):
        required_chromium()


def test_chromium_is_found_on_the_path(monkeypatch, tmp_path):
    binary = tmp_path / "chromium"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.delenv("MODELGATE_BROWSER_TESTS", raising=False)
    monkeypatch.delenv("MODELGATE_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert required_chromium() == str(binary)


def test_only_an_explicit_skip_skips_them(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("MODELGATE_BROWSER_TESTS", "skip")
    with pytest.raises(pytest.skip.Exception):
        required_chromium()
    monkeypatch.setenv("MODELGATE_BROWSER_TESTS", "no")
    with pytest.raises(pytest.fail.Exception, match="'run' \\(the default\\) or 'skip'"):
        required_chromium()
