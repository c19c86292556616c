"""Test-wide fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """The profile database defaults to the user cache dir: tests never touch the real
    one, in-process or in the subprocesses they start (which inherit the environment)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory):
    """One folder per test session for the real-model corpus (exports, zoo draws)."""
    return tmp_path_factory.mktemp("corpus")
