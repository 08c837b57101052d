"""``coreopt.credit.assign``: the retrieval credit-assignment task on top of the least core.

Value of a coalition S of sources (for one query), by ``scoring``:

* ``"logprob"``: ``log p(reference | query, S)`` under the LLM, where the reference is the given
  answer or the LLM's own greedy answer with every source in context (the paper's "full-context
  answer"). One scoring call per coalition; the transformers backend batches them.
* ``"judge"``: the LLM answers with only S in context, then a judge LLM rates that answer with a
  number (``samples`` repeated answers average out a stochastic judge; their standard error is
  reported).
* ``"embedding"``: cosine similarity (MiniLM) of the answer with S to the full-context answer.

With ``normalize=True`` (the default here) ``v(∅)`` is subtracted, so the credits add up to what the
sources together add over answering with none.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coreopt.errors import BudgetExhaustedError
from coreopt.game.result import LeastCoreConfig, LeastCoreResult
from coreopt.llm import LLM, Budget, Decoding, LLMError, Usage, make_llm, mean_and_stderr
from coreopt.llm.cache import text_hash
from coreopt.llm.client import run_sync
from coreopt.parallel import ExecutorSpec, parallel_map
from coreopt.status import Status

logger = logging.getLogger("coreopt.credit")

Scoring = Literal["auto", "logprob", "judge", "embedding"]

TEMPLATE_VERSION = "coreopt.credit/1"
SYSTEM = (
    "Answer the question using only the sources given. If they do not contain the answer, "
    "say that you do not know. Answer in one short sentence."
)
JUDGE = (
    "Rate how well the answer responds to the question, from 0 (useless or wrong) to 10 "
    "(complete and correct). Reply with the number only.\n\nQuestion: {query}\n\n"
    "{reference}Answer: {answer}\n\nRating:"
)


@dataclass(frozen=True)
class CreditItem:
    """One query with its sources (``{source_id: text}``) and an optional reference answer."""

    query: str
    sources: Mapping[str, str]
    reference: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip():
            raise ValueError(f"query must be a non-empty string, got {self.query!r}")
        if not self.sources:
            raise ValueError("sources must name at least one source")
        for sid, text in self.sources.items():
            if not isinstance(text, str):
                raise TypeError(f"source {sid!r} must be text, got {type(text).__name__}")


@dataclass(frozen=True)
class QueryCredit:
    """Credit for the sources of one query.

    Attributes:
        query: the query.
        credit: ``{source_id: payment}`` (the least-core payoff).
        result: the :class:`~coreopt.LeastCoreResult` (certificate: ``epsilon``,
            ``epsilon_upper``, ``exact``, ``status``, ``value_calls``).
        reference: the answer whose log-probability was scored (or compared with).
        values: every coalition value computed, ``{frozenset: value}``.
        stderr: standard error per coalition when ``samples > 1``.
    """

    query: str
    credit: dict[Hashable, float]
    result: LeastCoreResult
    reference: str | None
    values: dict[frozenset[Hashable], float] = field(repr=False, default_factory=dict)
    stderr: dict[frozenset[Hashable], float] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class CreditResult:
    """Per-source credit, aggregated over queries (sum of per-query least-core payoffs).

    Attributes:
        credit: ``{source_id: total credit}``.
        share: ``credit`` as fractions of the total (``nan`` when the total is 0).
        queries: one :class:`QueryCredit` per query.
        scoring: how coalitions were valued.
        model: ``backend/model`` that answered.
        usage: the LLM's counters (paid calls, tokens, cache hits, merged calls).
        status: ``CONVERGED`` when every query's solve converged, else the first other status
            (``BUDGET_EXHAUSTED`` when an LLM budget ran out).
        unsolved: queries the LLM budget ran out on before any LP could be solved (their full
            answer, ``v(N)``, ``v(∅)`` or a singleton was missing); they add no credit, and what
            they paid for stays in the cache.
    """

    credit: dict[Hashable, float]
    share: dict[Hashable, float]
    queries: list[QueryCredit]
    scoring: str
    model: str
    usage: Usage
    status: Status
    unsolved: list[str] = field(default_factory=list)

    def table(self) -> str:
        """A plain-text table of credits, largest first, with each query's certificate."""
        width = max([6, *(len(str(s)) for s in self.credit)])
        lines = [f"{'source':<{width}}  {'credit':>10}  {'share':>7}"]
        for sid, c in sorted(self.credit.items(), key=lambda kv: -kv[1]):
            lines.append(f"{sid!s:<{width}}  {c:>10.4f}  {self.share[sid]:>7.1%}")
        for q in self.queries:
            r = q.result
            if r.exact:  # every coalition evaluated: epsilon is certified optimal
                cert = f"epsilon = {r.epsilon:.4g} (exact)"
            else:  # only a lower bound is certified; unseen coalitions may need more
                cert = (
                    f"e* >= {r.epsilon:.4g} (certified), payoff needs >= {r.epsilon_upper:.4g} "
                    "over the evaluated coalitions (NOT certified)"
                )
            lines.append(
                f"query {q.query[:48]!r}: {cert}, {r.value_calls} value calls, {r.status.value}"
            )
        for query in self.unsolved:
            lines.append(f"query {query[:48]!r}: unsolved, the LLM budget ran out first")
        u = self.usage
        retried = f" ({u.retries} retries)" if u.retries else ""
        lines.append(
            f"{self.model} ({self.scoring}): {u.calls} paid LLM calls{retried}, "
            f"{u.cache_hits} cached, {u.merged} merged, {u.tokens} tokens"
        )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable report."""
        return {
            "credit": {str(k): v for k, v in self.credit.items()},
            "share": {str(k): v for k, v in self.share.items()},
            "scoring": self.scoring,
            "model": self.model,
            "status": self.status.value,
            "usage": dataclasses.asdict(self.usage),
            "queries": [
                {
                    "query": q.query,
                    "credit": {str(k): v for k, v in q.credit.items()},
                    "reference": q.reference,
                    "epsilon": q.result.epsilon,
                    "epsilon_upper": q.result.epsilon_upper,
                    "exact": q.result.exact,
                    "status": q.result.status.value,
                    "value_calls": q.result.value_calls,
                    "tight": [sorted(map(str, t)) for t in q.result.tight],
                }
                for q in self.queries
            ],
            "unsolved": list(self.unsolved),
        }


def build_prompt(query: str, context: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The chat prompt answering ``query`` from ``context`` (``(source_id, text)`` pairs)."""
    if context:
        body = "\n".join(f"[{i}] {text}" for i, (_, text) in enumerate(context, 1))
        user = f"Sources:\n{body}\n\nQuestion: {query}"
    else:
        user = f"Sources: (none)\n\nQuestion: {query}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_rating(text: str) -> float:
    """The first number in a judge's reply."""
    m = _NUMBER.search(text)
    if m is None:
        raise LLMError(f"the judge returned no number: {text[:80]!r}")
    return float(m.group())


def _as_sources(sources: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    if isinstance(sources, Mapping):
        return {str(k): v for k, v in sources.items()}
    if isinstance(sources, str):
        raise TypeError("sources must be a list of texts or a {source_id: text} mapping")
    return {f"s{i + 1}": text for i, text in enumerate(sources)}


def assign(
    query: str | Sequence[str],
    sources: Mapping[str, str] | Sequence[str],
    *,
    llm: Any = None,
    judge: Any = None,
    scoring: Scoring = "auto",
    reference: str | None = None,
    budget: int | Budget | None = None,
    config: LeastCoreConfig | None = None,
    samples: int = 1,
    decoding: Decoding | None = None,
    cache: Any = None,
    max_concurrency: int = 8,
    progress: bool | None = None,
    executor: ExecutorSpec = None,
    max_workers: int | None = None,
    verify: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> CreditResult:
    """Least-core credit of each source for answering ``query`` (or several queries).

    Args:
        query: the question, or a list of questions sharing ``sources`` (credits add up).
        sources: ``{source_id: text}``, or a list of texts (ids ``s1, s2, ...``).
        llm: the answering LLM: an :class:`~coreopt.llm.LLM`, a backend, a callable
            ``prompt -> answer``, ``"embedded"``, ``"openai[:MODEL]"``, ``"anthropic[:MODEL]"``,
            ``"hf:PATH"``; ``None`` is the server of ``COREOPT_LLM_BASE_URL``/
            ``COREOPT_LLM_MODEL`` when set, else the embedded SmolLM2 (never a silent fallback).
        judge: the judging LLM for ``scoring="judge"`` (default: ``llm``).
        scoring: ``"logprob"``, ``"judge"``, ``"embedding"``; ``"auto"`` is ``"judge"`` when a
            judge is given, else ``"logprob"``.
        reference: the answer to score (default: the LLM's answer with every source).
        budget: an int caps least-core value calls per query; a :class:`~coreopt.llm.Budget`
            caps the LLM's paid calls/tokens (the solve then ends with a partial result,
            ``status=BUDGET_EXHAUSTED``).
        config: a :class:`~coreopt.LeastCoreConfig`; ``overrides`` replace fields (defaults
            here: ``normalize=True``, ``retries=0`` since the LLM client retries).
        samples: answers per coalition for judge/embedding scoring (mean; standard error kept).
        decoding: decoding parameters of the answers (default greedy, 64 tokens).
        cache: the LLM cache (see :class:`~coreopt.llm.LLM`); ignored when ``llm`` is an LLM.
        max_concurrency: LLM calls in flight (over every query solved at once).
        progress: tqdm bars.
        executor: how several queries are solved: ``None`` (default) one after another in this
            process; ``"threads"``, ``"ray"`` or a :class:`concurrent.futures.Executor`: one
            least-core solve per query, fanned out (see :func:`assign_items`).
        max_workers: threads for ``executor="threads"``.
        verify: self-test the LLM's log-probabilities before a ``"logprob"`` solve
            (:mod:`coreopt.llm.selftest`: a server whose scores are shifted or misaligned is
            refused with :class:`~coreopt.llm.BadScoresError` before anything else is paid
            for; a pass is remembered per server and model). ``None`` (default): for backends
            that ask for it (OpenAI-compatible servers), not for local models or callables.
        checkpoint: a folder; each query's least-core solve saves its coalition values in a
            sqlite file there as they are paid for (see :func:`coreopt.least_core`'s
            ``checkpoint``), named by a hash of everything its values depend on (query,
            sources, reference, scoring, samples, decoding, the LLM's and judge's identity).
            A rerun pays only for the coalitions missing from it.

    Returns:
        A :class:`CreditResult`.
    """
    queries = [query] if isinstance(query, str) else list(query)
    srcs = _as_sources(sources)
    items = [CreditItem(q, srcs, reference) for q in queries]
    return assign_items(
        items,
        llm=llm,
        judge=judge,
        scoring=scoring,
        budget=budget,
        config=config,
        samples=samples,
        decoding=decoding,
        cache=cache,
        max_concurrency=max_concurrency,
        progress=progress,
        executor=executor,
        max_workers=max_workers,
        verify=verify,
        checkpoint=checkpoint,
        **overrides,
    )


def assign_items(
    items: Sequence[CreditItem],
    *,
    llm: Any = None,
    judge: Any = None,
    scoring: Scoring = "auto",
    budget: int | Budget | None = None,
    config: LeastCoreConfig | None = None,
    samples: int = 1,
    decoding: Decoding | None = None,
    cache: Any = None,
    max_concurrency: int = 8,
    progress: bool | None = None,
    embedder: Any = None,
    executor: ExecutorSpec = None,
    max_workers: int | None = None,
    verify: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> CreditResult:
    """:func:`assign` over several items, each with its own query and sources; a source id shared
    by several items is one source, and its credits add up.

    ``executor`` fans the items out, one least-core solve per item: ``"threads"`` (a thread
    pool in this process; the LLM's concurrency limit, in-flight merging, cache and budget are
    shared by every thread), ``"ray"`` (one Ray task per item, ``pip install 'coreopt[ray]'``),
    or any :class:`concurrent.futures.Executor` (a configured
    :class:`~coreopt.parallel.RayExecutor`, a process pool). In other processes each task gets
    a copy of the LLM: its backend is rebuilt there (SDK clients; a transformers model is loaded
    once per worker process, on that worker's device), it reopens the same sqlite cache file
    (WAL: shared safely by the processes of one machine), and a budget is shared through a
    ledger table in that file (:meth:`~coreopt.llm.LLM.share_budget`); the workers' usage is
    added to the LLM's :attr:`~coreopt.llm.LLM.usage` here. Functions (callable backends) must
    be picklable (Ray uses cloudpickle: closures work). Unlike :func:`~coreopt.parallel.
    parallel_map`, ``executor=None`` means one item after another: with a budget shared by the
    items, the first ones get it. Results do not depend on the executor (each solve is seeded),
    except which items a budget runs out on. ``verify`` and ``checkpoint`` are as in
    :func:`assign`; the self-test runs here, once, before any item is solved.
    """
    if not items:
        raise ValueError("no queries to assign credit for")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples!r}")
    if scoring not in ("auto", "logprob", "judge", "embedding"):
        raise ValueError(f"scoring={scoring!r}; expected 'auto', 'logprob', 'judge', 'embedding'")
    mode = scoring if scoring != "auto" else ("judge" if judge is not None else "logprob")
    llm_budget = budget if isinstance(budget, Budget) else None
    kw: dict[str, Any] = {"max_concurrency": max_concurrency, "cache": cache}
    if llm_budget is not None:
        kw["budget"] = llm_budget
    answerer = make_llm(llm, **kw)
    if llm_budget is not None and isinstance(llm, LLM):
        answerer.budget = llm_budget
    rater = answerer if judge is None else make_llm(judge, **kw)
    if mode == "logprob" and (
        verify or (verify is None and getattr(answerer.backend, "verify_scores", False))
    ):
        try:
            answerer.verify_scoring()
        except BudgetExhaustedError as exc:
            raise BudgetExhaustedError(
                f"the LLM budget ({_budget_words(answerer.budget)}) leaves no room for the "
                f"self-test of {answerer.describe()}'s log-probabilities (2 calls, remembered "
                f"once passed): {exc}"
            ) from exc
    if mode == "embedding" and embedder is None:
        from coreopt.credit.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    extra: dict[str, Any] = {"max_concurrency": answerer.max_concurrency}
    if isinstance(budget, int):
        extra["budget"] = budget
    if progress is not None:
        extra["progress"] = progress
    extra.update(overrides)
    cfg = dataclasses.replace(config or LeastCoreConfig(normalize=True, retries=0), **extra)
    folder = None
    if checkpoint is not None:
        if not isinstance(checkpoint, str | os.PathLike):
            raise TypeError(f"checkpoint must be a folder path, got {type(checkpoint).__name__}")
        folder = Path(checkpoint)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"checkpoint={str(folder)!r} must be a folder (one file per query)")
        folder.mkdir(parents=True, exist_ok=True)
    task = _Task(answerer, rater, mode, samples, decoding or Decoding(), cfg, embedder, folder)
    per_query: list[QueryCredit] = []
    unsolved: list[str] = []
    if executor is None:
        outs = [_SolveOne(task)(item) for item in items]
    else:
        quiet = dataclasses.replace(task, cfg=dataclasses.replace(cfg, progress=False))
        outs = parallel_map(
            _SolveOne(quiet),
            items,
            executor=executor,
            max_workers=max_workers,
            progress=progress,
            desc="credit: queries",
        )
    for item, (qc, used, judged) in zip(items, outs, strict=True):
        if qc is None:
            unsolved.append(item.query)
        else:
            per_query.append(qc)
        if used is not None:  # solved on a copy of the LLM in another process
            answerer.usage.add(used)
        if judged is not None and rater is not answerer:
            rater.usage.add(judged)
    if not per_query:
        kept = (
            "every call paid for is in the LLM cache"
            if answerer.cache is not None
            else "the LLM cache is off: no call paid for was kept"
        )
        if folder is not None:
            kept += f" (coalition values paid for are in the checkpoint folder {str(folder)!r})"
        raise BudgetExhaustedError(
            f"the LLM budget ({_budget_words(answerer.budget)}) ran out before any query could "
            f"be solved; {kept}"
        )
    total: dict[Hashable, float] = {}
    for q in per_query:
        for sid, c in q.credit.items():
            total[sid] = total.get(sid, 0.0) + c
    s = sum(total.values())
    share = {k: (v / s if s else float("nan")) for k, v in total.items()}
    status = next((q.result.status for q in per_query if q.result.status != "converged"), None)
    if unsolved:
        status = Status.BUDGET_EXHAUSTED
    return CreditResult(
        credit=total,
        share=share,
        queries=per_query,
        scoring=mode,
        model=f"{answerer.name}/{answerer.model}",
        usage=answerer.usage,
        status=status or Status.CONVERGED,
        unsolved=unsolved,
    )


def _budget_words(budget: Budget) -> str:
    parts = []
    if budget.calls is not None:
        parts.append(f"at most {budget.calls} paid calls")
    if budget.tokens is not None:
        parts.append(f"at most {budget.tokens} tokens")
    return ", ".join(parts) or "unlimited"


@dataclass
class _Task:
    llm: LLM
    judge: LLM
    scoring: str
    samples: int
    decoding: Decoding
    cfg: LeastCoreConfig
    embedder: Any
    checkpoint: Path | None = None

    def checkpoint_file(self, item: CreditItem, template: str) -> Path | None:
        """This item's checkpoint file: named by everything its values depend on."""
        if self.checkpoint is None:
            return None
        judged = self.judge.identity + "/" + self.judge.model if self.scoring == "judge" else ""
        name = text_hash(
            template,
            item.reference or "",
            self.scoring,
            str(self.samples),
            self.decoding.key(),
            self.llm.identity,
            self.llm.model,
            str(getattr(self.llm.backend, "score_format", "")),
            judged,
        )
        return self.checkpoint / f"query-{name}.sqlite"

    async def solve(self, item: CreditItem) -> QueryCredit:
        from coreopt.game.solver import aleast_core

        ids = list(item.sources)
        template = text_hash(
            TEMPLATE_VERSION,
            SYSTEM,
            item.query,
            json.dumps(list(item.sources.items())),
        )
        full_prompt = build_prompt(item.query, list(item.sources.items()))
        reference = item.reference
        if reference is None or self.scoring == "embedding":
            answer = await self.llm.agenerate(
                full_prompt, self.decoding, template=template, coalition=ids
            )
            reference = reference or answer.text
            if not reference.strip():
                raise LLMError(f"the LLM gave an empty full-context answer to {item.query!r}")
        ref_embedding = None
        if self.scoring == "embedding":
            ref_embedding = self.embedder.embed([reference])[0]
        stderr: dict[frozenset[Hashable], float] = {}
        values: dict[frozenset[Hashable], float] = {}

        async def value(coalition: frozenset[Hashable]) -> float:
            context = [(sid, item.sources[sid]) for sid in ids if sid in coalition]
            prompt = build_prompt(item.query, context)
            if self.scoring == "logprob":
                out = await self.llm.ascore(
                    prompt, reference, template=template, coalition=coalition
                )
                if out.logprob is None:
                    raise LLMError(f"{self.llm.name} returned no log-probability")
                values[coalition] = out.logprob
                return out.logprob
            vals = []
            for k in range(self.samples):
                dec = self.decoding
                if self.samples > 1 and dec.temperature == 0:
                    dec = dataclasses.replace(dec, temperature=0.7, seed=dec.seed or 0)
                ans = await self.llm.agenerate(
                    prompt, dec, template=template, coalition=coalition, sample=k
                )
                vals.append(await self._rate(item, template, ans.text, reference, ref_embedding))
            mean, se = mean_and_stderr(vals)
            if self.samples > 1:
                stderr[coalition] = se
            values[coalition] = mean
            return mean

        await self.llm.resolve_identity()
        await self.judge.resolve_identity()
        res = await aleast_core(
            value, ids, config=self.cfg, checkpoint=self.checkpoint_file(item, template)
        )
        return QueryCredit(
            query=item.query,
            credit=dict(res.payoff),
            result=res,
            reference=reference,
            values=values,
            stderr=stderr,
        )

    async def _rate(
        self, item: CreditItem, template: str, answer: str, reference: str, ref_embedding: Any
    ) -> float:
        if self.scoring == "embedding":
            import asyncio

            emb = await asyncio.to_thread(self.embedder.embed, [answer])
            return float((emb[0] * ref_embedding).sum())
        ref = f"Reference answer: {reference}\n\n" if reference else ""
        prompt = JUDGE.format(query=item.query, reference=ref, answer=answer)
        out = await self.judge.agenerate(
            prompt,
            Decoding(max_tokens=8),
            template=text_hash("judge", template, prompt),
        )
        return parse_rating(out.text)


@dataclass(frozen=True)
class _SolveOne:
    """One item's solve, as a picklable callable for executors (Ray tasks, process pools)."""

    task: _Task

    def __call__(self, item: CreditItem) -> tuple[QueryCredit | None, Usage | None, Usage | None]:
        qc: QueryCredit | None
        try:
            qc = run_sync(functools.partial(self.task.solve, item))
        except BudgetExhaustedError:  # before any LP: the item stays unsolved
            logger.info("LLM budget ran out before the query %r could be solved", item.query)
            qc = None
        llm, judge = self.task.llm, self.task.judge
        return (
            qc,
            llm.usage if llm.is_copy else None,
            judge.usage if judge.is_copy and judge is not llm else None,
        )


def load_items(path: str | Path) -> list[CreditItem]:
    """Read credit items from JSON (an object or a list of objects) or JSONL.

    Each object: ``{"query": str, "sources": {id: text} | [text, ...] | [{"id", "text"}, ...],
    "reference": str (optional)}``; a top-level ``{"queries": [...], "sources": ...}`` shares the
    sources among several queries.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict) and "queries" in data:
        shared = data.get("sources")
        data = [
            q if isinstance(q, dict) else {"query": q, "sources": shared} for q in data["queries"]
        ]
        for d in data:
            d.setdefault("sources", shared)
    if isinstance(data, dict):
        data = [data]
    items = []
    for i, d in enumerate(data):
        if not isinstance(d, dict) or "query" not in d or "sources" not in d:
            raise ValueError(f"{path}: item {i} needs 'query' and 'sources'")
        src = d["sources"]
        if isinstance(src, list) and src and isinstance(src[0], dict):
            src = {str(s["id"]): s["text"] for s in src}
        items.append(CreditItem(d["query"], _as_sources(src), d.get("reference")))
    return items
