"""Persistent sqlite cache of LLM calls (WAL journal: concurrent readers, crash-safe writes).

Each row is one paid call, keyed by (who answered, model, prompt-template hash, sorted coalition,
decoding parameters, kind, sample index). Rows are committed as soon as the call returns, so a run
killed midway resumes without paying again for anything it finished. "Who answered" is the
backend's identity: for a server its base URL and, where ``/models`` reports one, a fingerprint of
the served model (``openai@http://127.0.0.1:8080/v1#3f2a...``); for local backends their kind
(``transformers``, ``callable``). Files written before server identities were added stay readable:
their server rows (keyed ``openai``) are simply never matched again, so those calls are paid once
more rather than reused from an unknown server. A table ``verified`` remembers passed self-tests
(:mod:`coreopt.llm.selftest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coreopt.llm.types import Completion


def default_cache_dir() -> Path:
    """``$COREOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/coreopt``, else ``~/.cache/coreopt``."""
    env = os.environ.get("COREOPT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "coreopt"


def default_cache_path() -> Path:
    """The default cache file, ``default_cache_dir() / "llm-cache.sqlite"``."""
    return default_cache_dir() / "llm-cache.sqlite"


def text_hash(*parts: str) -> str:
    """A short stable hash of text parts (sha256, 16 hex digits)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def coalition_key(coalition: Iterable[Hashable]) -> str:
    """The coalition as sorted JSON (labels as strings), independent of order."""
    return json.dumps(sorted(str(c) for c in coalition))


@dataclass(frozen=True)
class CacheKey:
    """Everything that determines an LLM call's result.

    Attributes:
        backend: who answered: the backend's identity (``"openai@URL#fingerprint"``,
            ``"transformers"``, ...).
        model: model identifier.
        template: hash of the prompt template and its fixed inputs (query, source texts, scoring).
        coalition: sorted JSON list of the labels in context (``"[]"`` outside games).
        params: canonical JSON of the decoding parameters.
        kind: ``"generate"`` or ``"score"`` (or another name a caller picks).
        sample: index of a repeated sample.
    """

    backend: str
    model: str
    template: str
    coalition: str
    params: str
    kind: str
    sample: int = 0

    @property
    def digest(self) -> str:
        return hashlib.sha256(
            json.dumps(
                [
                    self.backend,
                    self.model,
                    self.template,
                    self.coalition,
                    self.params,
                    self.kind,
                    self.sample,
                ]
            ).encode()
        ).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    backend TEXT, model TEXT, template TEXT, coalition TEXT, params TEXT, kind TEXT,
    sample INTEGER, text TEXT, logprob REAL, prompt_tokens INTEGER, completion_tokens INTEGER,
    meta TEXT, created REAL
);
CREATE TABLE IF NOT EXISTS verified (test TEXT PRIMARY KEY, detail TEXT, created REAL)
"""


class SQLiteCache:
    """A persistent cache of :class:`~coreopt.llm.Completion` by :class:`CacheKey`.

    Args:
        path: sqlite file (created with its folder); ``":memory:"`` for a throwaway cache.

    Thread-safe (one connection behind a lock); WAL mode lets several processes share a file.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = str(default_cache_path() if path is None else path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            self._conn.commit()

    def __repr__(self) -> str:
        return f"SQLiteCache({self.path!r})"

    def get(self, key: CacheKey) -> Completion | None:
        """The cached completion, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT text, logprob, prompt_tokens, completion_tokens, meta FROM calls "
                "WHERE key = ?",
                (key.digest,),
            ).fetchone()
        if row is None:
            return None
        return Completion(
            text=row[0],
            logprob=row[1],
            prompt_tokens=row[2],
            completion_tokens=row[3],
            meta=json.loads(row[4]) if row[4] else {},
        )

    def put(self, key: CacheKey, value: Completion) -> None:
        """Store (or replace) a completion; committed at once."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    key.digest,
                    key.backend,
                    key.model,
                    key.template,
                    key.coalition,
                    key.params,
                    key.kind,
                    key.sample,
                    value.text,
                    value.logprob,
                    value.prompt_tokens,
                    value.completion_tokens,
                    json.dumps(value.meta) if value.meta else None,
                    time.time(),
                ),
            )
            self._conn.commit()

    def verified(self, test: str) -> bool:
        """Whether a passed self-test ``test`` (see :mod:`coreopt.llm.selftest`) is remembered."""
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM verified WHERE test = ?", (test,)).fetchone()
        return row is not None

    def remember_verified(self, test: str, detail: str = "") -> None:
        """Remember that the self-test ``test`` passed."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO verified VALUES (?, ?, ?)", (test, detail, time.time())
            )
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def rows(self) -> list[dict[str, Any]]:
        """Every row (for inspection and tests)."""
        with self._lock:
            cur = self._conn.execute(
                "SELECT backend, model, template, coalition, params, kind, sample, text, "
                "logprob, prompt_tokens, completion_tokens FROM calls ORDER BY created"
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
