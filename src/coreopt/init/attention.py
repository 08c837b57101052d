"""Mimetic initialisation of self-attention and the layout adapters that find W_q, W_k, W_v, W_o.

Row-vector convention (the paper's): ``q = x W_q``, ``W_q`` is ``(d, H·k)``; head ``h`` uses the
columns ``W_q^h = W_q[:, h k:(h+1) k]``. ``nn.Linear.weight`` is ``W.T``, so head ``h`` of a
query projection is the *rows* ``h k:(h+1) k`` of its weight, and ``W_q^h W_k^{hT}`` is
``q_w[h].T @ k_w[h]`` (a ``d x d`` matrix). The output projection ``W_o`` is ``(H·k, d)``:
``nn.Linear.weight`` of the output is ``W_o.T`` and head ``h`` owns its *columns*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from coreopt.init._linalg import make_generator, mimetic_target, split_factor
from coreopt.init.config import MimeticAttentionConfig

_Q_NAMES = ("q_proj", "query", "q", "wq", "to_q")
_K_NAMES = ("k_proj", "key", "k", "wk", "to_k")
_V_NAMES = ("v_proj", "value", "v", "wv", "to_v")
_O_NAMES = ("o_proj", "out_proj", "o", "wo", "to_out", "proj")
_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
_CROSS_NAMES = (
    "multihead_attn",  # nn.TransformerDecoderLayer
    "EncDecAttention",  # T5
    "crossattention",  # BERT / GPT-2 decoders
    "cross_attention",
    "cross_attn",
    "encoder_attn",  # BART, Whisper, Marian
    "src_attn",
)
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head")


@dataclass
class AttentionProjections:
    """Views (``nn.Linear`` convention, ``(out, in)``) of an attention layer's four projections.

    Writing into ``q_w``/``k_w``/``v_w``/``o_w`` writes into the module's parameters (they are
    views, also for fused ``qkv`` and ``nn.MultiheadAttention.in_proj_weight``).

    Attributes:
        layout: ``"fused_qkv"`` (timm: rows ``[Q|K|V]``, heads contiguous), ``"separate"``
            (q/k/v/o projections; grouped-query attention when ``num_kv_heads < num_heads``),
            ``"multihead_attention"`` (``nn.MultiheadAttention``), ``"bert"`` (``self.query/
            key/value`` + ``output.dense``) or ``"gpt2_conv1d"`` (GPT-2's fused ``Conv1D``
            ``c_attn``/``c_proj``, weights stored ``(in, out)``: the views are transposes).
        d_model: the input width of q/k/v and the output width of o.
        num_heads, num_kv_heads, head_dim: head structure; query head ``h`` reads key/value head
            ``h // (num_heads // num_kv_heads)`` (the ``repeat_interleave`` convention of HF).
        q_w, k_w, v_w, o_w: ``(H k, d)``, ``(H_kv k, d)``, ``(H_kv k, d)``, ``(d, H k)``.
        q_b, k_b, v_b, o_b: the matching biases (``None`` when absent).
    """

    layout: str
    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    q_w: torch.Tensor
    k_w: torch.Tensor
    v_w: torch.Tensor
    o_w: torch.Tensor
    q_b: torch.Tensor | None = None
    k_b: torch.Tensor | None = None
    v_b: torch.Tensor | None = None
    o_b: torch.Tensor | None = None

    def __post_init__(self) -> None:
        d, H, Hkv, k = self.d_model, self.num_heads, self.num_kv_heads, self.head_dim
        if H < 1 or Hkv < 1 or H % Hkv:
            raise ValueError(f"num_heads ({H}) must be a positive multiple of num_kv_heads ({Hkv})")
        expected = {
            "q": (H * k, d),
            "k": (Hkv * k, d),
            "v": (Hkv * k, d),
            "o": (d, H * k),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, f"{name}_w").shape)
            if got != shape:
                raise ValueError(
                    f"{self.layout} attention: {name} weight has shape {got}, expected {shape} "
                    f"(d_model={d}, num_heads={H}, num_kv_heads={Hkv}, head_dim={k}); "
                    "pass num_heads/num_kv_heads explicitly if they were guessed wrong"
                )
        if k > d:
            raise ValueError(f"head_dim ({k}) must not exceed d_model ({d})")

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def qk_product(self, h: int) -> torch.Tensor:
        """``W_q^h W_k^{g(h)T}`` (``d x d``, float64): the bilinear form of head ``h``'s logits."""
        k = self.head_dim
        g = h // self.group_size
        q = self.q_w[h * k : (h + 1) * k].detach().double()
        kk = self.k_w[g * k : (g + 1) * k].detach().double()
        return q.T @ kk

    def vo_product(self) -> torch.Tensor:
        """``Σ_h W_v^{g(h)} W_o^h`` (``d x d``, float64): the value-output map summed over heads."""
        k, rep = self.head_dim, self.group_size
        v = self.v_w.detach().double().T  # W_v, (d, H_kv k)
        # expand W_v to the query heads (repeat each kv head `rep` times), then multiply by W_o.
        v_heads = v.reshape(self.d_model, self.num_kv_heads, 1, k).expand(-1, -1, rep, -1)
        v_full = v_heads.reshape(self.d_model, self.num_heads * k)
        return v_full @ self.o_w.detach().double().T


def _first_attr(module: nn.Module, names: tuple[str, ...]) -> object | None:
    for name in names:
        value = getattr(module, name, None)
        if value is not None:
            return value
    config = getattr(module, "config", None)
    if config is not None:
        for name in names:
            value = getattr(config, name, None)
            if value is not None:
                return value
    return None


def _child_linear(module: nn.Module, names: tuple[str, ...]) -> nn.Linear | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Sequential) and len(child) and isinstance(child[0], nn.Linear):
            child = child[0]  # e.g. diffusers' to_out = [Linear, Dropout]
        if isinstance(child, nn.Linear):
            return child
    return None


def find_attention(
    module: nn.Module, *, num_heads: int | None = None, num_kv_heads: int | None = None
) -> AttentionProjections | None:
    """The projections of ``module`` if it is a recognised attention layer, else ``None``.

    Recognised: ``nn.MultiheadAttention``; a fused ``qkv`` ``nn.Linear`` plus an output ``proj``
    or ``out_proj`` (timm ``Attention`` and coreopt's ViT); separate q/k/v/o linears under the
    usual names (``q_proj``/``k_proj``/``v_proj``/``o_proj`` of HF Llama/Mistral incl. grouped-query
    attention, ``q``/``k``/``v``/``o``, ``query``/``key``/``value`` + ``out_proj``, ...); HF BERT's
    ``BertAttention`` (``self.query/key/value`` with the sibling ``output.dense``, found at the
    parent that owns both); HF GPT-2's ``GPT2Attention`` (fused ``Conv1D`` ``c_attn`` and
    ``c_proj``, weights stored ``(in, out)``). The head count comes from ``num_heads`` or an
    attribute (``num_heads``, ``num_attention_heads``,
    ``n_heads``, ...; also on ``module.config``).

    Raises:
        ValueError: the module looks like attention but its head count is unknown or the shapes
            are inconsistent.
    """
    if isinstance(module, nn.MultiheadAttention):
        return _from_mha(module)
    H = num_heads if num_heads is not None else _first_attr(module, _HEADS)
    Hkv = num_kv_heads if num_kv_heads is not None else _first_attr(module, _KV_HEADS)
    qkv = getattr(module, "qkv", None)
    if isinstance(qkv, nn.Linear):
        out = _child_linear(module, ("proj", "out_proj", "o_proj"))
        if out is None:
            return None
        H = _heads(module, H)
        d = qkv.in_features
        if qkv.out_features % 3:
            raise ValueError(f"{type(module).__name__}.qkv: out_features not divisible by 3")
        inner = qkv.out_features // 3
        w, b = qkv.weight, qkv.bias
        return AttentionProjections(
            "fused_qkv",
            d,
            H,
            H,
            inner // H,
            w[:inner],
            w[inner : 2 * inner],
            w[2 * inner :],
            out.weight,
            None if b is None else b[:inner],
            None if b is None else b[inner : 2 * inner],
            None if b is None else b[2 * inner :],
            out.bias,
        )
    gpt2 = _from_gpt2(module, H)
    if gpt2 is not None:
        return gpt2
    bert = _from_bert(module, H)
    if bert is not None:
        return bert
    q = _child_linear(module, _Q_NAMES)
    k = _child_linear(module, _K_NAMES)
    v = _child_linear(module, _V_NAMES)
    o = _child_linear(module, _O_NAMES)
    if q is None or k is None or v is None or o is None:
        return None
    return _from_linears("separate", _heads(module, H), Hkv, q, k, v, o)


def _from_bert(module: nn.Module, H: object) -> AttentionProjections | None:
    """HF BERT/RoBERTa/ViT-HF ``*Attention``: ``self.query/key/value`` and ``output.dense``."""
    inner = getattr(module, "self", None)
    if not isinstance(inner, nn.Module):
        inner = getattr(module, "attention", None)
    output = getattr(module, "output", None)
    if not isinstance(inner, nn.Module) or not isinstance(output, nn.Module):
        return None
    q = _child_linear(inner, ("query",))
    k = _child_linear(inner, ("key",))
    v = _child_linear(inner, ("value",))
    o = _child_linear(output, ("dense",))
    if q is None or k is None or v is None or o is None:
        return None
    H = _heads(module, H if H is not None else _first_attr(inner, _HEADS))
    return _from_linears("bert", H, H, q, k, v, o)


def _from_linears(
    layout: str, H: int, Hkv: object, q: nn.Linear, k: nn.Linear, v: nn.Linear, o: nn.Linear
) -> AttentionProjections:
    """Projections from four ``nn.Linear`` (``Hkv``: the key/value head count if known)."""
    head_dim = q.out_features // H
    Hkv_int = int(Hkv) if isinstance(Hkv, int) else k.out_features // head_dim
    return AttentionProjections(
        layout,
        q.in_features,
        H,
        Hkv_int,
        head_dim,
        q.weight,
        k.weight,
        v.weight,
        o.weight,
        q.bias,
        k.bias,
        v.bias,
        o.bias,
    )


def _is_conv1d(m: object) -> bool:
    """GPT-2's ``Conv1D``: a ``weight`` of shape ``(nx, nf)`` = (in, out) and ``nf``/``nx``."""
    return (
        isinstance(m, nn.Module)
        and isinstance(getattr(m, "weight", None), torch.Tensor)
        and hasattr(m, "nf")
        and hasattr(m, "nx")
    )


def _from_gpt2(module: nn.Module, H: object) -> AttentionProjections | None:
    """HF GPT-2 ``GPT2Attention``: fused ``c_attn`` (``Conv1D``, weight ``(d, 3d)``) + ``c_proj``.

    Cross-attention (``is_cross_attention``) has ``q_attn`` ``(d, d)`` and ``c_attn`` ``(d, 2d)``
    (keys and values only).
    """
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    if not (_is_conv1d(c_attn) and _is_conv1d(c_proj)):
        return None
    H = _heads(module, H)
    w = cast(torch.Tensor, c_attn.weight)  # type: ignore[union-attr]
    b = cast("torch.Tensor | None", getattr(c_attn, "bias", None))
    d = w.shape[0]
    q_attn = getattr(module, "q_attn", None)
    if _is_conv1d(q_attn):  # cross-attention: queries from q_attn, keys/values from c_attn
        qw = cast(torch.Tensor, q_attn.weight).T  # type: ignore[union-attr]
        qb = cast("torch.Tensor | None", getattr(q_attn, "bias", None))
        kw, vw = w[:, :d].T, w[:, d : 2 * d].T
        kb = None if b is None else b[:d]
        vb = None if b is None else b[d : 2 * d]
    else:
        if w.shape[1] != 3 * d:
            raise ValueError(
                f"{type(module).__name__}.c_attn: weight {tuple(w.shape)} is not (d, 3d)"
            )
        qw, kw, vw = w[:, :d].T, w[:, d : 2 * d].T, w[:, 2 * d :].T
        qb = None if b is None else b[:d]
        kb = None if b is None else b[d : 2 * d]
        vb = None if b is None else b[2 * d :]
    ow = cast(torch.Tensor, c_proj.weight).T  # type: ignore[union-attr]
    return AttentionProjections(
        "gpt2_conv1d",
        d,
        H,
        H,
        d // H,
        qw,
        kw,
        vw,
        ow,
        qb,
        kb,
        vb,
        cast("torch.Tensor | None", getattr(c_proj, "bias", None)),
    )


def is_cross_attention(name: str, module: nn.Module) -> bool:
    """Whether the attention layer ``module`` (at qualified ``name``) is cross-attention.

    True when the module says so (``is_cross_attention``: HF BERT, GPT-2) or its attribute name
    is a known cross-attention slot: ``multihead_attn`` (``nn.TransformerDecoderLayer``),
    ``EncDecAttention`` (T5), ``crossattention``, ``cross_attention``, ``cross_attn``,
    ``encoder_attn`` (BART, Whisper), ``src_attn``.
    """
    if getattr(module, "is_cross_attention", False) is True:
        return True
    return name.rsplit(".", 1)[-1] in _CROSS_NAMES


def _heads(module: nn.Module, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(
        f"{type(module).__name__} looks like attention but its head count is unknown: give it a "
        f"num_heads attribute or pass num_heads=... explicitly"
    )


def _from_mha(m: nn.MultiheadAttention) -> AttentionProjections:
    d, H = m.embed_dim, m.num_heads
    if m.kdim != d or m.vdim != d:
        raise ValueError(
            "nn.MultiheadAttention with kdim/vdim != embed_dim is cross-attention; the mimetic "
            "recipe needs square W_q W_k^T and W_v W_o"
        )
    if m.in_proj_weight is not None:
        w = m.in_proj_weight
        qw, kw, vw = w[:d], w[d : 2 * d], w[2 * d :]
    else:
        qw, kw, vw = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    b = m.in_proj_bias
    return AttentionProjections(
        "multihead_attention",
        d,
        H,
        H,
        d // H,
        qw,
        kw,
        vw,
        m.out_proj.weight,
        None if b is None else b[:d],
        None if b is None else b[d : 2 * d],
        None if b is None else b[2 * d :],
        m.out_proj.bias,
    )


@torch.no_grad()
def init_projections_(
    p: AttentionProjections,
    config: MimeticAttentionConfig,
    generator: torch.Generator | None,
) -> None:
    """Write the mimetic recipe into the projections ``p`` (see :func:`mimetic_attention_`)."""
    d, k, rep = p.d_model, p.head_dim, p.group_size
    if config.qk:
        for g in range(p.num_kv_heads):
            targets = [
                mimetic_target(d, config.alpha_qk, config.beta_qk, generator) for _ in range(rep)
            ]
            if rep == 1:
                L, R = split_factor(targets[0], k)
                lefts = [L]
            else:
                # grouped-query attention (reconstructed): the shared key factor comes from the
                # group's mean target; each query head is the least-squares fit of its own target
                # given that key (W_q^h = A_h R (R^T R)^{-1}, so W_q^h R^T = A_h V_k V_k^T).
                _, R = split_factor(torch.stack(targets).mean(0), k)
                gram = R.T @ R
                lefts = [torch.linalg.solve(gram, (A @ R).T).T for A in targets]
            p.k_w[g * k : (g + 1) * k].copy_(R.T)
            for j, L in enumerate(lefts):
                h = g * rep + j
                p.q_w[h * k : (h + 1) * k].copy_(L.T)
        if config.zero_bias:
            for b in (p.q_b, p.k_b):
                if b is not None:
                    b.zero_()
    if config.vo:
        A = mimetic_target(d, config.alpha_vo, -config.beta_vo, generator)
        width = p.num_kv_heads * k
        rank = min(d, width)
        L, R = split_factor(A, rank)  # W_v W_o ≈ L R^T
        Wv = torch.zeros(d, width, dtype=torch.float64)
        Wv[:, :rank] = L
        Rt = torch.zeros(width, d, dtype=torch.float64)
        Rt[:rank] = R.T
        # W_o^h = (R^T)[g(h)] / rep: the heads of a group share the value and split the output.
        Wo = Rt.reshape(p.num_kv_heads, 1, k, d).expand(-1, rep, -1, -1).reshape(-1, d) / rep
        p.v_w.copy_(Wv.T)
        p.o_w.copy_(Wo.T)
        if config.zero_bias:
            for b in (p.v_b, p.o_b):
                if b is not None:
                    b.zero_()


def mimetic_attention_(
    module: nn.Module,
    config: MimeticAttentionConfig | None = None,
    *,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Mimetic initialisation of a self-attention layer, in place (Trockman & Kolter, ICML 2023).

    Row-vector convention, width ``d``, ``H`` heads of dim ``k``:

    * per head: ``A_h = α₁ Z_h + β₁ I`` with ``Z_h`` i.i.d. ``N(0, 1/d)``; ``A_h = U S V^T``;
      ``W_q^h = U_k S_k^{1/2}``, ``W_k^h = V_k S_k^{1/2}``, so ``W_q^h W_k^{hT}`` is the best
      rank-``k`` approximation of ``A_h`` (diagonal mean ≈ 0.31 at ``d=64, H=4``, not 0.7);
    * jointly over heads: ``A = α₂ Z - β₂ I = U S V^T``, ``W_v = U S^{1/2}``,
      ``W_o = S^{1/2} V^T``, so ``W_v W_o = A`` (diagonal mean ≈ -0.4);
    * biases of q, k, v, o set to zero. Factorisations run in float64 on CPU.

    ``nn.Linear`` stores ``W.T``: the query weight's rows ``h k:(h+1) k`` receive ``(W_q^h)^T``.

    Grouped-query attention *(reconstructed)*: key/value head ``g`` serves query heads
    ``g·r … g·r + r - 1``; the key factor comes from the group's mean target and each query head
    is the least-squares fit of its own target; ``W_v`` has rank ``H_kv k`` and each query head's
    slice of ``W_o`` is ``1/r`` of its group's factor, so ``Σ_h W_v^{g(h)} W_o^h`` is the best
    rank-``H_kv k`` approximation of ``A``.

    Args:
        module: an attention layer :func:`find_attention` recognises (``nn.MultiheadAttention``,
            timm-style fused ``qkv`` + ``proj``, separate q/k/v/o projections incl. GQA).
        config: the constants and switches (:class:`MimeticAttentionConfig`); default: the paper.
        num_heads, num_kv_heads: override the head counts read from the module.
        seed, generator: randomness (one of them; neither uses torch's global RNG).

    Returns:
        ``module``, initialised.

    Examples:
        >>> import torch
        >>> mha = mimetic_attention_(torch.nn.MultiheadAttention(64, 4), seed=0)
        >>> Wq, Wk = mha.in_proj_weight[:16].T, mha.in_proj_weight[64:80].T  # head 0
        >>> bool((Wq @ Wk.T).diagonal().mean() > 0.25)
        True
    """
    cfg = MimeticAttentionConfig() if config is None else config
    if not isinstance(cfg, MimeticAttentionConfig):
        raise TypeError(f"config must be a MimeticAttentionConfig, got {type(cfg).__name__}")
    p = find_attention(module, num_heads=num_heads, num_kv_heads=num_kv_heads)
    if p is None:
        raise ValueError(
            f"{type(module).__name__} is not a recognised attention layer (expected "
            "nn.MultiheadAttention, a fused qkv + proj, or q/k/v/o projections)"
        )
    init_projections_(p, cfg, make_generator(seed, generator))
    record_init(module, "attention", cfg)
    return module


def record_init(module: nn.Module, part: str, config: object) -> None:
    """Remember on ``module`` which recipe config initialised it (read by :func:`verify`).

    Also flags ``module``, its submodules and their parameters with ``_is_hf_initialized``, the
    marker Hugging Face ``transformers`` checks before (re-)initialising a module or tensor, so
    a later ``model.post_init()`` / ``init_weights()`` keeps the recipe's weights.
    """
    records = dict(getattr(module, "_coreopt_init", {}))
    records[part] = config
    object.__setattr__(module, "_coreopt_init", records)
    for sub in module.modules():
        object.__setattr__(sub, "_is_hf_initialized", True)
        for p in sub.parameters(recurse=False):
            p._is_hf_initialized = True  # type: ignore[attr-defined]
