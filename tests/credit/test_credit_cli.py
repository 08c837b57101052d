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


# -- hygiene: stdout is the report, errors are one line in CLI words -----------------------------


def serve_env(monkeypatch, server) -> None:
    monkeypatch.setenv("COREOPT_LLM_BASE_URL", server.url)
    monkeypatch.setenv("COREOPT_LLM_MODEL", "fake")
    monkeypatch.setenv("OPENAI_API_KEY", "k")


def items(tmp_path, n: int = 3) -> str:
    data = tmp_path / "in.json"
    sources = {k: f"text {k}" for k in "abcdef"[:n]}
    data.write_text(json.dumps({"query": "q?", "sources": sources, "reference": "yes"}))
    return str(data)


def test_stdout_to_stderr_moves_c_level_and_python_writes(capfd) -> None:
    import os

    from coreopt.cli import stdout_to_stderr

    with stdout_to_stderr():
        os.write(1, b"a C library's banner\n")  # what HiGHS does: file descriptor 1
        print("a stray print")
    print("the report")
    out, err = capfd.readouterr()
    assert out == "the report\n"
    assert "a C library's banner" in err
    assert "a stray print" in err


def test_json_on_stdout_is_json_alone(fake_server, tmp_path) -> None:
    """The real command in a fresh process: stdout must parse as JSON (no solver banner, no
    progress bar, no log line), whatever the libraries print."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "COREOPT_LLM_BASE_URL": fake_server.url,
        "COREOPT_LLM_MODEL": "fake",
        "OPENAI_API_KEY": "k",
    }
    args = [sys.executable, "-m", "coreopt.cli", "credit", items(tmp_path), "--json"]
    args += ["--no-cache", "--verbose"]  # --verbose: INFO logs too, on stderr
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == "converged"
    assert report["usage"]["calls"] == 2 + 8  # self-test, then the 8 coalitions of 3 sources


def test_zero_call_budget_is_zero_not_unlimited(fake_server, tmp_path, monkeypatch) -> None:
    serve_env(monkeypatch, fake_server)
    base = ["credit", items(tmp_path), "--no-progress", "--max-calls", "0"]
    result = CliRunner().invoke(app, [*base, "--no-cache"])
    assert result.exit_code == 1
    assert result.stdout == ""
    err = result.stderr.strip()
    assert "\n" not in err  # one line
    assert err.startswith("coreopt credit: error: ")
    assert "at most 0 paid calls" in err
    assert "--max-calls" in err
    judged = CliRunner().invoke(app, [*base, "--no-cache", "--scoring", "judge"])
    assert judged.exit_code == 1
    assert "the LLM cache is off: no call paid for was kept" in judged.stderr
    assert fake_server.requests == 0
    tokens = CliRunner().invoke(app, [*base[:-2], "--max-tokens", "0", "--no-cache"])
    assert tokens.exit_code == 1
    assert fake_server.requests == 0
    # with a cache, a zero budget reruns on cached values alone
    cache = ["--cache", str(tmp_path / "c.sqlite")]
    paid = CliRunner().invoke(app, [*base[:-2], *cache, "--json"])
    assert paid.exit_code == 0, paid.output
    requests = fake_server.requests
    again = CliRunner().invoke(app, [*base, *cache, "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["credit"] == json.loads(paid.stdout)["credit"]
    assert fake_server.requests == requests  # nothing paid, self-test remembered
    negative = CliRunner().invoke(app, [*base[:-1], "-1"])
    assert negative.exit_code == 2
    assert "--max-calls" in negative.output


def test_errors_are_one_line_naming_the_server_traceback_with_verbose(
    fake_server, tmp_path, monkeypatch
) -> None:
    serve_env(monkeypatch, fake_server)
    fake_server.score_mode = "shift_next"
    base = ["credit", items(tmp_path), "--no-progress", "--no-cache"]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert "\n" not in err
    assert "self-test" in err
    assert fake_server.url in err
    assert "--scoring judge" in err
    assert "Traceback" not in result.output
    verbose = CliRunner().invoke(app, [*base, "--verbose"])
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.stderr
    assert verbose.stdout == ""


def test_retries_and_timeout_options_reach_the_client(fake_server, tmp_path, monkeypatch) -> None:
    serve_env(monkeypatch, fake_server)
    fake_server.fail = [500] * 100
    base = ["credit", items(tmp_path), "--no-progress", "--no-cache", "--scoring", "judge"]
    opts = ["--retries", "1", "--timeout", "5", "--max-concurrency", "1"]
    result = CliRunner().invoke(app, [*base, *opts])
    assert result.exit_code == 1
    assert "failed after 2 HTTP request(s)" in result.stderr
    assert fake_server.requests % 2 == 0  # each failed call: one try and one retry
    assert "known_values" not in result.stderr


def test_checkpoint_option_writes_one_file_per_query(fake_server, tmp_path, monkeypatch) -> None:
    serve_env(monkeypatch, fake_server)
    folder = tmp_path / "ck"
    args = ["credit", items(tmp_path), "--no-progress", "--no-cache", "--checkpoint", str(folder)]
    first = CliRunner().invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    assert len(list(folder.glob("query-*.sqlite"))) == 1
    paid = fake_server.requests
    again = CliRunner().invoke(app, [*args, "--json", "--no-verify"])
    assert again.exit_code == 0, again.output
    assert fake_server.requests == paid  # every value from the checkpoint, no cache needed
    assert json.loads(again.stdout)["credit"] == json.loads(first.stdout)["credit"]
