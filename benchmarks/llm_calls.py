"""Benchmark of LLM value calls: client throughput against the ideal, and how many calls the least
core needs against pyDVL's Monte Carlo least core on a retrieval task.

Table 1, throughput. The fake OpenAI-compatible server of the tests (``tests/_fake_llm_server.py``,
a stdlib threading HTTP server) runs in a process of its own and answers every request after 50 ms.
Each run makes distinct value calls of the retrieval task (``LLM.ascore``: the log-probability of
the reference answer given a coalition's sources, through the ``/v1/completions`` echo endpoint,
as ``coreopt.credit.assign(scoring="logprob")`` does), at concurrency 1, 8, 32 and 64, through
coreopt's :class:`~coreopt.llm.LLM` (concurrency limit, retries, in-flight merging, budget
ledger, a fresh sqlite cache file per run). Anchors: the bare ``openai`` SDK client with an
``asyncio.Semaphore`` (the same requests, no cache) and the ideal, ``concurrency / latency`` calls
per second. The time column is the wall time per call; the ratio column is anchor ÷ coreopt, so
the ideal row's ratio is coreopt's efficiency. Runs are timed round-robin (median of the repeats).

Table 2, calls for the same accuracy. A synthetic retrieval game (offline, deterministic): a query
needs 4 facts with weights; gold sources state one fact each, paraphrases state a fact less well
(substitutes), two sources state two facts, and the rest are distractors that lower the answer's
quality (more so with few relevant sources); two of the facts together earn a multi-hop bonus.
The value of a coalition S is the answer quality with only S in context. coreopt runs the real
credit task, ``coreopt.credit.assign(query, sources, llm=...)`` with a callable backend that scores
the prompt it receives (LLM calls counted by the client). pyDVL's Monte Carlo least core (uniform
coalitions, cvxpy) reads the same values; its calls are its utility evaluations. Accuracy of a
payoff x is the relative excess of its true requirement ``max_S v(S) - x(S)`` over e* (both from
the full value table; the floor ``1e-3 |v(N)|`` guards e* near 0). pyDVL runs at coreopt's call
count, at its default 1000·n samples, and on a doubling grid of sample counts from coreopt's call
count up to 64,000, stopping at the first count whose payoff is as accurate as coreopt's (its
relative excess at most coreopt's, or 0.1%, whichever is larger; 0.1% is about the accuracy of
SCS, pyDVL's default solver).

pyDVL lives in a separate environment (it pins numpy<2): ``bash benchmarks/setup_anchors.sh``
builds ``.venv-bench-pydvl``; the anchor worker of ``benchmarks/least_core.py`` runs it.

Run from the repository root::

    python benchmarks/llm_calls.py                  # print the tables (about 15 min on 2 cores)
    python benchmarks/llm_calls.py --record         # also append them to benchmarks/RESULTS.md
    python benchmarks/llm_calls.py --quick --skip-anchors   # smoke test, coreopt alone
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
FAKE_SERVER = REPO_ROOT / "tests" / "_fake_llm_server.py"

LATENCY = 0.05
CONCURRENCY, QUICK_CONCURRENCY = (1, 8, 32, 64), (1, 8)
CALLS_PER_SLOT, MIN_CALLS = 16, 40
"""Calls per throughput run: ``max(MIN_CALLS, CALLS_PER_SLOT * concurrency)``."""
SIZES, SEEDS = (12, 16), (0, 1, 2)
QUICK_SIZES, QUICK_SEEDS = (8,), (0,)
MC_CAP, QUICK_MC_CAP = 64_000, 4_000
SAME_ACCURACY = 1e-3
REL_FLOOR = 1e-3
ANCHOR_TIMEOUT = 900.0


# =============================================================================================
# The retrieval game
# =============================================================================================


@dataclass(frozen=True)
class RetrievalGame:
    """Sources answering one query; ``table[mask]`` is the answer quality with those sources.

    Attributes:
        n: number of sources.
        seed: generator seed.
        weights: importance of each fact the query needs.
        quality: ``quality[i, f]``, how well source ``i`` states fact ``f`` (0: not at all).
        kinds: ``gold``, ``paraphrase``, ``two-fact`` or ``distractor`` per source.
        table: the value of every coalition (player i = bit i).
    """

    n: int
    seed: int
    weights: npt.NDArray[np.float64]
    quality: npt.NDArray[np.float64]
    kinds: tuple[str, ...]
    table: npt.NDArray[np.float64]

    QUERY = "Which facts does the report need?"
    REFERENCE = "All four facts, with the multi-hop link between the first two."
    BONUS = 1.0
    DISTRACTION = 0.15

    @classmethod
    def make(cls, n: int, seed: int) -> RetrievalGame:
        rng = np.random.default_rng(seed)
        k = 4
        weights = rng.uniform(0.5, 2.0, k)
        quality = np.zeros((n, k))
        kinds: list[str] = []
        n_para = max(1, n // 4)
        n_two = 2 if n >= 10 else 1
        for f in range(k):
            quality[len(kinds), f] = 1.0
            kinds.append("gold")
        for _ in range(n_para):
            quality[len(kinds), rng.integers(k)] = rng.uniform(0.6, 0.9)
            kinds.append("paraphrase")
        for _ in range(n_two):
            a, b = rng.choice(k, size=2, replace=False)
            quality[len(kinds), [a, b]] = 0.7
            kinds.append("two-fact")
        while len(kinds) < n:
            kinds.append("distractor")
        order = rng.permutation(n)
        quality = quality[order]
        kinds = [kinds[i] for i in order]
        masks = np.arange(1 << n)
        bits = ((masks[:, None] >> np.arange(n)) & 1).astype(np.float64)
        cover = (bits[:, :, None] * quality[None]).max(axis=1)  # (2^n, k)
        relevant = bits @ (quality.max(axis=1) > 0)
        distractors = bits.sum(axis=1) - relevant
        table = (
            cover @ weights
            + cls.BONUS * np.minimum(cover[:, 0], cover[:, 1])
            - cls.DISTRACTION * distractors / (1.0 + relevant)
        )
        # the values stand for log-probabilities, which coreopt checks are <= 0: shift the whole
        # game (every coalition, the empty one included) so that its best value is 0
        table = table - table.max()
        return cls(n, seed, weights, quality, tuple(kinds), table)

    @property
    def label(self) -> str:
        return f"retrieval n={self.n} seed={self.seed}"

    def source_ids(self) -> list[str]:
        return [f"d{i:02d}" for i in range(self.n)]

    def sources(self) -> dict[str, str]:
        """Source texts; each names its document number so a scorer can tell which are present."""
        out = {}
        for i, sid in enumerate(self.source_ids()):
            facts = [f"fact {f + 1}" for f in np.flatnonzero(self.quality[i])]
            what = f"states {' and '.join(facts)}" if facts else "is off topic"
            out[sid] = f"(doc {i}) This {self.kinds[i]} document {what}."
        return out

    def score(self, prompt: str, continuation: str) -> float:
        """The "log-probability" of the reference answer given the prompt: the answer quality
        with the documents present in the prompt."""
        mask = 0
        for m in re.finditer(r"\(doc (\d+)\)", prompt):
            mask |= 1 << int(m.group(1))
        return float(self.table[mask])

    def requirement(self, x: npt.ArrayLike) -> float:
        """``max over proper non-empty S of v(S) - x(S)`` (from the full table)."""
        xa = np.asarray(x, dtype=np.float64)
        masks = np.arange(1 << self.n)
        bits = ((masks[:, None] >> np.arange(self.n)) & 1).astype(np.float64)
        excess = self.table - bits @ xa
        return float(excess[1:-1].max())


# =============================================================================================
# Table 1: throughput against the fake server
# =============================================================================================


class ServerProcess:
    """The fake OpenAI-compatible server in a process of its own (no shared GIL with clients)."""

    def __init__(self, delay: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_SERVER), "--delay", str(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise RuntimeError(f"the fake server did not start (said {self.url!r})")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def value_prompts(game: RetrievalGame, count: int, seed: int) -> list[list[dict[str, str]]]:
    """Prompts of ``count`` distinct random coalitions of the game's sources."""
    from coreopt.credit.assign import build_prompt

    rng = np.random.default_rng(seed)
    sources = list(game.sources().items())
    masks = rng.choice(1 << game.n, size=min(count, 1 << game.n), replace=False)
    return [
        build_prompt(game.QUERY, [s for i, s in enumerate(sources) if int(m) >> i & 1])
        for m in masks
    ]


def coreopt_run(url: str, concurrency: int, prompts: Sequence[Any], folder: str) -> float:
    """Wall seconds for the value calls through coreopt's LLM (fresh sqlite cache file)."""
    from coreopt.llm import LLM, OpenAIBackend

    llm = LLM(
        OpenAIBackend("fake", base_url=url, api_key="k"),
        max_concurrency=concurrency,
        cache=Path(folder) / f"{uuid.uuid4().hex}.sqlite",
        adaptive=False,  # the fixed concurrency of the anchor (the fake server never times out)
    )

    async def run() -> None:
        await asyncio.gather(*(llm.ascore(p, RetrievalGame.REFERENCE) for p in prompts))

    t0 = time.perf_counter()
    asyncio.run(run())
    seconds = time.perf_counter() - t0
    assert llm.usage.calls == len(prompts), llm.usage
    if llm.cache is not None:
        llm.cache.close()
    return seconds


def sdk_run(url: str, concurrency: int, prompts: Sequence[Any]) -> float:
    """Wall seconds for the same requests with the bare ``openai`` client and a semaphore."""
    import openai

    from coreopt.llm.prompt import render_chatml

    texts = [render_chatml(p) + RetrievalGame.REFERENCE for p in prompts]

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0)
        sem = asyncio.Semaphore(concurrency)

        async def one(text: str) -> None:
            async with sem:
                await client.completions.create(
                    model="fake", prompt=text, max_tokens=1, echo=True, logprobs=0, temperature=0
                )

        try:
            await asyncio.gather(*(one(t) for t in texts))
        finally:
            await client.close()

    t0 = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - t0


def throughput_table(args: Any) -> Any:
    from _harness import BenchTable, Column

    table = BenchTable(
        "Value-call throughput against a server with 50 ms latency",
        [
            Column("calls", "calls per run", "{:,}"),
            Column("ms", "ms per call", "{:.2f}"),
            Column("rate", "calls/s", "{:.1f}"),
        ],
        time_key="ms",
        ratio_header="anchor ÷ coreopt (ms per call)",
        description=(
            "Distinct logprob value calls of the retrieval task (`LLM.ascore` → "
            "`/v1/completions` with echo) against the fake OpenAI-compatible server in a "
            "separate process, 50 ms per request. coreopt: the `LLM` wrapper with a fresh sqlite "
            "cache file per run. Anchors: the bare `openai` client with an `asyncio.Semaphore`, "
            "and the ideal (concurrency ÷ latency): its ratio is coreopt's efficiency. Median of "
            f"{args.repeats or 3} runs, timed round-robin. The client, the server and other jobs "
            "share the CPU, which caps the rate at high concurrency."
        ),
    )
    from _harness import time_interleaved

    levels = QUICK_CONCURRENCY if args.quick else CONCURRENCY
    game = RetrievalGame.make(16, 0)
    server = ServerProcess(LATENCY)
    try:
        with tempfile.TemporaryDirectory() as folder:
            warm = value_prompts(game, 2, seed=0)  # imports and first connections, untimed
            coreopt_run(server.url, 1, warm, folder)
            sdk_run(server.url, 1, warm)
            for conc in levels:
                count = max(MIN_CALLS, CALLS_PER_SLOT * conc) // (4 if args.quick else 1)
                prompts = value_prompts(game, count, seed=conc)
                fns: dict[str, Callable[[], float]] = {
                    "coreopt": functools.partial(coreopt_run, server.url, conc, prompts, folder),
                    "sdk": functools.partial(sdk_run, server.url, conc, prompts),
                }
                timings = time_interleaved(
                    fns,
                    warmup=0 if args.quick else (args.warmup if args.warmup is not None else 1),
                    repeats=1 if args.quick else (args.repeats or 3),
                )
                case = f"concurrency {conc}"
                for key, name in (
                    ("coreopt", "coreopt LLM (sqlite cache, limiter, ledger)"),
                    ("sdk", "openai SDK + asyncio.Semaphore"),
                ):
                    sec = timings[key].median
                    table.add(
                        case,
                        name,
                        calls=len(prompts),
                        ms=1000 * sec / len(prompts),
                        rate=len(prompts) / sec,
                    )
                table.add(
                    case,
                    "ideal (concurrency ÷ latency)",
                    calls=len(prompts),
                    ms=1000 * LATENCY / conc,
                    rate=conc / LATENCY,
                )
                _log(f"throughput: concurrency {conc} done")
    finally:
        server.close()
    return table


# =============================================================================================
# Table 2: calls for the same accuracy
# =============================================================================================


def coreopt_credit(game: RetrievalGame) -> dict[str, Any]:
    """coreopt's credit task on the game; calls counted by the LLM client."""
    from coreopt.credit import assign
    from coreopt.llm import LLM, CallableBackend

    llm = LLM(
        CallableBackend(None, game.score, model=f"retrieval-{game.n}-{game.seed}"), cache=False
    )
    t0 = time.perf_counter()
    res = assign(game.QUERY, game.sources(), llm=llm, reference=game.REFERENCE, progress=False)
    seconds = time.perf_counter() - t0
    q = res.queries[0]
    x = np.array([q.credit[sid] for sid in game.source_ids()])
    return {
        "x": x,
        "calls": res.usage.calls,
        "seconds": seconds,
        "status": q.result.status.value,
        "exact": q.result.exact,
    }


def accuracy(game: RetrievalGame, estar: float, x: npt.ArrayLike) -> float:
    """Relative excess of the payoff's requirement over e*."""
    scale = max(abs(estar), REL_FLOOR * abs(float(game.table[-1])), 1e-12)
    return (game.requirement(x) - estar) / scale


def calls_table(args: Any) -> Any:
    from _harness import BenchTable, Column

    table = BenchTable(
        "Calls for the same accuracy on the retrieval task",
        [
            Column("calls", "LLM / utility calls", "{:,}"),
            Column("rel", "rel. excess over e*", "{:+.2e}"),
            Column("dist", "‖x − x_egal‖∞", "{:.1e}"),
            Column("secs", "time s", "{:.2f}"),
        ],
        time_key="calls",
        ratio_header="calls ratio (anchor ÷ coreopt)",
        description=(
            "The synthetic retrieval game (facts with weights, gold sources, paraphrases, "
            "two-fact sources, distractors, a multi-hop bonus). coreopt: `coreopt.credit.assign` "
            "with a callable backend that scores each prompt (its LLM calls). pyDVL: Monte "
            "Carlo least core on the same values (its utility calls). rel. excess: how much more "
            "than e* the payoff's true requirement is, relative to e*. \"to reach coreopt's "
            "accuracy\" doubles pyDVL's samples from coreopt's call count up to "
            f"{QUICK_MC_CAP if args.quick else MC_CAP:,}, stopping at the first that is as "
            f"accurate (rel. excess ≤ max(coreopt's, {SAME_ACCURACY:g})). x_egal: the exact "
            "egalitarian least-core point."
        ),
    )
    worker = None
    if not args.skip_anchors:
        worker = _anchor_worker(args)
    sizes = QUICK_SIZES if args.quick else SIZES
    seeds = QUICK_SEEDS if args.quick else SEEDS
    cap = QUICK_MC_CAP if args.quick else MC_CAP
    pyname = "pyDVL"
    if worker is not None:
        versions = worker.request({"job": "versions"}, 120)
        if versions.get("pydvl"):
            pyname = f"pyDVL {versions['pydvl']}"
        else:
            _log(f"pyDVL unavailable: {versions.get('pydvl_error', versions)}")
            worker = None
    try:
        with tempfile.TemporaryDirectory() as folder:
            for n in sizes:
                for seed in seeds:
                    game = RetrievalGame.make(n, seed)
                    measure_case(table, worker, pyname, game, cap, folder, args)
    finally:
        if worker is not None:
            worker.close()
    return table


def measure_case(
    table: Any, worker: Any, pyname: str, game: RetrievalGame, cap: int, folder: str, args: Any
) -> None:
    """coreopt on ``game``, then pyDVL at coreopt's calls, its default, and on the grid."""
    from coreopt.game import exact_least_core

    ref = exact_least_core(game.table, tie_break="egalitarian")
    estar, x_egal = float(ref.epsilon), np.asarray(ref.x)
    case = f"{game.label} (e*={estar + 0.0:.4g})"
    core = coreopt_credit(game)
    rel = accuracy(game, estar, core["x"])
    table.add(
        case,
        "coreopt credit.assign (least core)",
        calls=core["calls"],
        rel=rel,
        dist=float(np.abs(core["x"] - x_egal).max()),
        secs=core["seconds"],
        note=f"status {core['status']}" + (", exact" if core["exact"] else ""),
    )
    if worker is None:
        table.skip(case, f"{pyname} Monte Carlo", _skip_reason(args))
        _log(f"{case}: coreopt {core['calls']} calls")
        return
    path = str(Path(folder) / f"{game.n}-{game.seed}.npy")
    np.save(path, game.table)

    def mc(samples: int) -> Any:
        res = worker.request(
            {
                "job": "pydvl",
                "samples": int(samples),
                "seed": game.seed,
                "table": path,
                "n": game.n,
            },
            ANCHOR_TIMEOUT,
        )
        if "x" in res:
            res["rel"] = accuracy(game, estar, res["x"])
            res["dist"] = float(np.abs(np.asarray(res["x"]) - x_egal).max())
        return res

    def row(name: str, res: Any, note: str = "") -> None:
        if "x" not in res:
            table.skip(case, name, str(res.get("error", "failed")))
            return
        extra = f"{res['distinct']:,} distinct coalitions"
        table.add(
            case,
            name,
            calls=res["calls"],
            rel=res["rel"],
            dist=res["dist"],
            secs=res["seconds"],
            note=f"{extra}; {note}" if note else extra,
        )

    row(f"{pyname} Monte Carlo, coreopt's calls", mc(core["calls"] - 1))
    row(f"{pyname} Monte Carlo, default 1000·n samples", mc(1000 * game.n))
    target = max(rel, SAME_ACCURACY)
    samples, best, last, tried = core["calls"], None, None, 0
    while samples <= cap:
        last = mc(samples)
        tried += 1
        if "x" not in last:
            break
        if best is None or last["rel"] < best["rel"]:
            best = last
        if last["rel"] <= target:
            break
        samples *= 2
    assert last is not None
    name = f"{pyname} Monte Carlo, to reach coreopt's accuracy"
    if "x" in last and last["rel"] <= target:
        row(name, last, f"first of the doubling grid with rel. ≤ {target:.1e}")
    elif "x" in last:  # the largest size tried: pyDVL needs more calls than that
        assert best is not None
        row(
            name,
            last,
            f"NOT reached at any of {tried} grid sizes up to {last['calls']:,} calls (most "
            f"accurate: rel. {best['rel']:.2e} at {best['calls']:,}): the ratio is a lower bound",
        )
    else:
        row(name, last)
    _log(f"{case}: done")


def _skip_reason(args: Any) -> str:
    return "--skip-anchors" if args.skip_anchors else "pyDVL environment unavailable"


def _anchor_worker(args: Any) -> Any:
    sys.path.insert(0, str(BENCH_DIR))
    import least_core

    venv = Path(args.venv) if args.venv else least_core.DEFAULT_VENV
    python = venv / "bin" / "python"
    if not python.exists():
        _log(f"no anchor environment at {venv} (bash benchmarks/setup_anchors.sh): skipping")
        return None
    log = Path(tempfile.gettempdir()) / "coreopt-llm-calls-anchor.log"
    return least_core.AnchorWorker(python, log)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from _harness import bench_parser, parse_args, report

    parser = bench_parser(__doc__)
    parser.add_argument(
        "--skip-anchors", action="store_true", help="run coreopt alone (no pyDVL environment)"
    )
    parser.add_argument(
        "--venv", default=os.environ.get("COREOPT_BENCH_VENV"), help="the pyDVL environment"
    )
    parser.add_argument(
        "--tables",
        default="throughput,calls",
        help="comma-separated subset of: throughput, calls (default: both)",
    )
    args = parse_args(parser, argv)
    wanted = {t.strip() for t in args.tables.split(",") if t.strip()}
    unknown = wanted - {"throughput", "calls"}
    if unknown:
        parser.error(f"unknown tables {sorted(unknown)}")
    tables = []
    if "throughput" in wanted:
        tables.append(throughput_table(args))
    if "calls" in wanted:
        tables.append(calls_table(args))
    report(tables, args, title="llm: value-call throughput and calls vs pyDVL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
