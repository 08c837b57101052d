"""Chat prompts rendered as text, for scoring through a completions endpoint.

A server's chat endpoint applies the model's chat template itself, but it returns no
log-probabilities of a given answer; scoring goes through the completions endpoint with
``echo=True``, which takes raw text. So the template is rendered here, client-side, to give the
model the same prompt the embedded model (:class:`~coreopt.llm.TransformersBackend`, which uses its
tokenizer's template) and the chat endpoint give it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coreopt.llm.types import Prompt, as_messages, as_text


def render_chatml(prompt: Prompt) -> str:
    """ChatML, the template of SmolLM2, Qwen2/2.5 and many others: each message as
    ``<|im_start|>{role}\\n{content}<|im_end|>\\n``, then ``<|im_start|>assistant\\n``. Messages are
    rendered as given (no default system message is inserted).

    Examples:
        >>> render_chatml([{"role": "user", "content": "Hi"}])
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    body = "".join(
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in as_messages(prompt)
    )
    return body + "<|im_start|>assistant\n"


def render_plain(prompt: Prompt) -> str:
    """The prompt flattened to text with a final newline (no chat markers)."""
    return as_text(prompt) + "\n"


def _tokenizer_renderer(path: str) -> Callable[[Prompt], str]:
    from coreopt.llm.hf import _transformers

    _, auto_tokenizer = _transformers()
    tok = auto_tokenizer.from_pretrained(path)
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"chat_template='hf:{path}': that tokenizer has no chat template")

    def render(prompt: Prompt) -> str:
        return str(
            tok.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
        )

    return render


def chat_renderer(template: str | Callable[[Prompt], str]) -> tuple[str, Callable[[Prompt], str]]:
    """``(name, render)`` for a ``chat_template`` argument: ``"chatml"``, ``"plain"``,
    ``"hf:PATH"`` (a local tokenizer folder's template, rendered by ``transformers``) or a
    function ``prompt -> text``."""
    if callable(template):
        return getattr(template, "__qualname__", "custom"), template
    if template == "chatml":
        return "chatml", render_chatml
    if template == "plain":
        return "plain", render_plain
    if isinstance(template, str) and template.startswith("hf:") and len(template) > 3:
        return template, _tokenizer_renderer(template[3:])
    raise ValueError(
        f"chat_template={template!r}; expected 'chatml', 'plain', 'hf:PATH' or a function "
        "prompt -> text"
    )


def describe(value: Any, limit: int = 80) -> str:
    """A short printable excerpt of an unexpected value (for error messages)."""
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
