"""Fixtures: the loopback OpenAI-compatible server (see tests/_fake_llm_server.py)."""

from _fake_llm_server import FakeServer, fake_server

__all__ = ["FakeServer", "fake_server"]
