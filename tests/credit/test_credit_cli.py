"""``coreopt credit`` against the loopback OpenAI-compatible server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from coreopt.cli import app

pytest.importorskip("openai")  # the CLI's judge talks to the loopback server through openai's SDK


def test_credit_cli_prints_a_table_and_writes_json(fake_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COREOPT_LLM_BASE_URL", fake_server.url)
    monkeypatch.setenv("COREOPT_LLM_MODEL", "fake")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    data = tmp_path / "in.json"
    data.write_text(json.dumps({"query": "q?", "sources": {"a": "x", "b": "y", "c": "z"}}))
    out = tmp_path / "out.json"
    args = ["credit", str(data), "--scoring", "judge", "--no-progress", "--json-out", str(out)]
    result = CliRunner().invoke(app, [*args, "--cache", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 0, result.output
    assert "source" in result.output
    assert "openai/fake (judge)" in result.output
    report = json.loads(out.read_text())
    assert report["credit"] == {"a": 1.0, "b": 1.0, "c": 1.0} or all(
        abs(v - 1.0) < 1e-6 for v in report["credit"].values()
    )
    assert report["queries"][0]["exact"] is True


def test_credit_cli_budget_gives_a_partial_result(fake_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COREOPT_LLM_BASE_URL", fake_server.url)
    monkeypatch.setenv("COREOPT_LLM_MODEL", "fake")
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"query": "q?", "sources": ["x", "y", "z", "w"]}) + "\n")
    args = ["credit", str(data), "--scoring", "judge", "--no-cache", "--no-progress", "--json"]
    result = CliRunner().invoke(app, [*args, "--max-calls", "14"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "budget_exhausted"


def test_credit_cli_fans_queries_out_on_threads(fake_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COREOPT_LLM_BASE_URL", fake_server.url)
    monkeypatch.setenv("COREOPT_LLM_MODEL", "fake")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    data = tmp_path / "in.jsonl"
    lines = [json.dumps({"query": f"q{i}?", "sources": {"a": "x", "b": "y"}}) for i in range(3)]
    data.write_text("\n".join(lines) + "\n")
    base = ["credit", str(data), "--scoring", "judge", "--no-cache", "--no-progress", "--json"]
    seq = CliRunner().invoke(app, base)
    fan = CliRunner().invoke(app, [*base, "--executor", "threads", "--max-workers", "3"])
    assert seq.exit_code == 0, seq.output
    assert fan.exit_code == 0, fan.output
    # same scripted answers, one solve per query either way: the same credits
    assert json.loads(fan.output)["credit"] == json.loads(seq.output)["credit"]
    bad = CliRunner().invoke(app, [*base, "--executor", "dask"])
    assert bad.exit_code != 0
    assert "--executor" in bad.output
