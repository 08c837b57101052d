"""Find the structure quantization can exploit: attention blocks, MLPs, and the norms feeding them.

Discovery is by module naming over the layouts of common architectures (Llama/Mistral/Qwen-style
``q_proj/k_proj/v_proj/o_proj`` + ``gate_proj/up_proj/down_proj``, BERT-style
``self.query/key/value`` + ``output.dense`` + ``intermediate.dense``, OPT-style ``fc1/fc2``). The
result is a :class:`ModelStructure` whose ``graph`` (a ``networkx.DiGraph``) has the linear layers
and norms as nodes and typed edges:

* ``feeds``: a norm whose output is the linear's input;
* ``vo``, ``qk``: the head-wise paired matrices of an attention block (dual transforms);
* ``gated``: up -> down of a gated MLP (diagonal scaling); ``mlp``: fc1 -> fc2.

Connected components over the pair edges are the independent units of work of
:func:`coreopt.quantize`.

Nothing here changes the model. Invariance of the dual transforms rests on the recognised layout
(verified by the tests on tiny random Llama and BERT models); an unrecognised model simply gets no
pairs and is quantized matrix by matrix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import nn

from coreopt.quant.proxy import InputMoments

_ATTENTION_LAYOUTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("q_proj", "k_proj", "v_proj", ("o_proj", "out_proj", "dense")),
    ("self.query", "self.key", "self.value", ("output.dense",)),
)
_MLP_LAYOUTS: tuple[tuple[str | None, str, str], ...] = (
    ("gate_proj", "up_proj", "down_proj"),
    (None, "intermediate.dense", "output.dense"),
    (None, "fc1", "fc2"),
    (None, "dense_h_to_4h", "dense_4h_to_h"),
)
_ATTN_NORMS = ("input_layernorm", "ln_1", "self_attn_layer_norm", "attention_norm", "norm1")
_MLP_NORMS = ("post_attention_layernorm", "ln_2", "final_layer_norm", "ffn_norm", "norm2")


@dataclass(frozen=True)
class AttentionSite:
    """A multi-head attention block: the four projections and the head layout.

    Attributes:
        name: the attention module's qualified name.
        q, k, v, o: qualified names of the ``nn.Linear`` projections.
        n_heads, n_kv_heads, head_dim: query heads, key/value heads (grouped-query attention when
            fewer), per-head width.
        rope: ``True`` for rotary position embeddings (rotate-half layout), ``False`` for none
            (absolute/learned positions), ``None`` when unknown (then Q/K get no dual transform).
        norm: qualified name of the norm feeding q/k/v, or ``None``.
    """

    name: str
    q: str
    k: str
    v: str
    o: str
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope: bool | None
    norm: str | None = None


@dataclass(frozen=True)
class MlpSite:
    """An MLP block: ``down(act(gate x) * up x)`` (gated) or ``down(act(up x))``.

    Attributes:
        name: the MLP's (or layer's) qualified name.
        up, down: qualified names of the linears; ``gate`` for a gated MLP, else ``None``.
        act: activation name (``"silu"``, ``"gelu"``, ...; from the model config when known).
        norm: qualified name of the norm feeding the MLP, or ``None``.
    """

    name: str
    up: str
    down: str
    gate: str | None
    act: str
    norm: str | None = None


@dataclass
class ModelStructure:
    """What :func:`discover` found (see the module docstring)."""

    attention: list[AttentionSite] = field(default_factory=list)
    mlp: list[MlpSite] = field(default_factory=list)
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)

    def input_norm(self, linear: str) -> str | None:
        """The norm feeding ``linear``, if known."""
        for src, _, kind in self.graph.in_edges(linear, data="kind"):
            if kind == "feeds":
                return str(src)
        return None

    def components(self, names: list[str]) -> list[list[str]]:
        """Groups of ``names`` linked by pair edges (``vo``, ``qk``, ``gated``), in model order."""
        order = {n: i for i, n in enumerate(names)}
        sub = nx.Graph()
        sub.add_nodes_from(names)
        for a, b, kind in self.graph.edges(data="kind"):
            if kind in ("vo", "qk", "gated") and a in order and b in order:
                sub.add_edge(a, b)
        comps = [sorted(c, key=order.__getitem__) for c in nx.connected_components(sub)]
        return sorted(comps, key=lambda c: order[c[0]])


def _get(module: nn.Module, path: str) -> nn.Module | None:
    cur: Any = module
    for part in path.split("."):
        cur = getattr(cur, part, None)
        if not isinstance(cur, nn.Module):
            return None
    return cur


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}.{rel}" if prefix else rel


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, or a module named ``*RMSNorm``/``*LayerNorm`` with a 1-d weight."""
    if isinstance(module, nn.LayerNorm):
        return True
    w = getattr(module, "weight", None)
    name = type(module).__name__
    return (
        isinstance(w, torch.Tensor)
        and w.ndim == 1
        and (name.endswith("RMSNorm") or name.endswith("LayerNorm"))
    )


def norm_affine(module: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Effective ``(γ, β)`` of a norm (Gemma-style ``1 + weight`` handled)."""
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    gamma = None if not isinstance(w, torch.Tensor) else w.detach().float()
    if gamma is not None and type(module).__name__.startswith("Gemma"):
        gamma = gamma + 1.0
    beta = b.detach().float() if isinstance(b, torch.Tensor) else None
    return gamma, beta


def _config(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def _first_attr(objs: list[Any], names: tuple[str, ...]) -> Any:
    for obj in objs:
        if obj is None:
            continue
        for n in names:
            v = getattr(obj, n, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def _rope(model: nn.Module, cfg: Any) -> bool | None:
    if cfg is not None:
        if getattr(cfg, "partial_rotary_factor", 1.0) not in (None, 1, 1.0):
            return None
        for attr in ("rope_theta", "rope_parameters", "rope_scaling"):
            if getattr(cfg, attr, None) is not None:
                return True
        pos = getattr(cfg, "position_embedding_type", None)
        if pos is not None:
            return None if pos not in ("absolute",) else False
    names = [n for n, _ in model.named_modules()]
    if any("rotary" in n for n in names):
        return True
    if any(n.endswith("position_embeddings") for n in names):
        return False
    return None


def discover(model: nn.Module) -> ModelStructure:
    """Find attention blocks, MLPs and their input norms in ``model`` (see the module docstring).

    Examples:
        >>> from torch import nn
        >>> discover(nn.Sequential(nn.Linear(4, 4))).attention
        []
    """
    cfg = _config(model)
    rope = _rope(model, cfg)
    act = str(getattr(cfg, "hidden_act", "") or "") if cfg is not None else ""
    modules = dict(model.named_modules())
    order = {n: i for i, n in enumerate(modules)}
    norms = [n for n, m in modules.items() if is_norm(m)]
    st = ModelStructure()
    g = st.graph
    claimed: set[str] = set()

    def parent_of(name: str) -> str:
        return name.rsplit(".", 1)[0] if "." in name else ""

    def preceding_norm(name: str) -> str | None:
        before = [n for n in norms if order[n] < order[name]]
        return before[-1] if before else None

    def named_norm(site: str, candidates: tuple[str, ...]) -> str | None:
        # A pre-norm layer names its norms (Llama: input_layernorm); walk up two levels.
        p = site
        for _ in range(2):
            p = parent_of(p)
            for c in candidates:
                full = _join(p, c)
                if full in modules and is_norm(modules[full]):
                    return full
        return None

    for prefix, mod in modules.items():
        for q_rel, k_rel, v_rel, o_opts in _ATTENTION_LAYOUTS:
            q, k, v = (_get(mod, r) for r in (q_rel, k_rel, v_rel))
            if not all(isinstance(x, nn.Linear) for x in (q, k, v)):
                continue
            o_rel = next((r for r in o_opts if isinstance(_get(mod, r), nn.Linear)), None)
            if o_rel is None:
                continue
            names = [_join(prefix, r) for r in (q_rel, k_rel, v_rel, o_rel)]
            if any(n in claimed for n in names):
                continue
            site = _attention_site(prefix, mod, model, names, rope)
            if site is None:
                continue
            norm = named_norm(prefix, _ATTN_NORMS) or preceding_norm(site.q)
            site = dataclasses.replace(site, norm=norm)
            st.attention.append(site)
            claimed.update(names)
            g.add_nodes_from(names, kind="linear")
            g.add_edge(site.v, site.o, kind="vo")
            g.add_edge(site.k, site.q, kind="qk")
            if norm is not None:
                g.add_node(norm, kind="norm")
                for n in (site.q, site.k, site.v):
                    g.add_edge(norm, n, kind="feeds")
            break
    for prefix, mod in modules.items():
        for gate_rel, up_rel, down_rel in _MLP_LAYOUTS:
            up, down = _get(mod, up_rel), _get(mod, down_rel)
            gate = _get(mod, gate_rel) if gate_rel else None
            if not (isinstance(up, nn.Linear) and isinstance(down, nn.Linear)):
                continue
            if gate_rel and not isinstance(gate, nn.Linear):
                continue
            names = [_join(prefix, r) for r in (up_rel, down_rel)]
            gname = _join(prefix, gate_rel) if gate_rel else None
            if any(n in claimed for n in names) or (gname and gname in claimed):
                continue
            if up.out_features != down.in_features or (
                gate is not None and gate.out_features != up.out_features
            ):
                continue
            first = gname or names[0]
            norm = named_norm(first, _MLP_NORMS) or preceding_norm(first)
            site_act = act or ("silu" if gate is not None else "gelu")
            st.mlp.append(MlpSite(prefix, names[0], names[1], gname, site_act, norm))
            claimed.update(names)
            if gname:
                claimed.add(gname)
            g.add_nodes_from([*names, *([gname] if gname else [])], kind="linear")
            g.add_edge(names[0], names[1], kind="gated" if gname else "mlp")
            if gname:
                g.add_edge(gname, names[1], kind="gate")
            if norm is not None:
                g.add_node(norm, kind="norm")
                for fed in (names[0], gname):
                    if fed:
                        g.add_edge(norm, fed, kind="feeds")
            break
    return st


def _attention_site(
    prefix: str, mod: nn.Module, model: nn.Module, names: list[str], rope: bool | None
) -> AttentionSite | None:
    lin = [_get(model, n) for n in names]
    q, k, v, o = lin
    assert all(isinstance(x, nn.Linear) for x in lin)
    objs = [mod, getattr(mod, "self", None), getattr(mod, "config", None), _config(model)]
    n_heads = _first_attr(objs, ("num_heads", "num_attention_heads", "n_heads", "n_head"))
    n_kv = _first_attr(objs, ("num_key_value_heads", "num_kv_heads", "n_kv_heads")) or n_heads
    head_dim = _first_attr(objs, ("head_dim", "attention_head_size"))
    if n_heads is None:
        return None
    if head_dim is None:
        head_dim = q.out_features // n_heads  # type: ignore[union-attr]
    ok = (
        q.out_features == n_heads * head_dim  # type: ignore[union-attr]
        and k.out_features == n_kv * head_dim  # type: ignore[union-attr]
        and v.out_features == n_kv * head_dim  # type: ignore[union-attr]
        and o.in_features == n_heads * head_dim  # type: ignore[union-attr]
        and n_heads % n_kv == 0
        and q.in_features == k.in_features == v.in_features  # type: ignore[union-attr]
    )
    if not ok:
        return None
    if rope and head_dim % 2:
        rope = None
    q_name, k_name, v_name, o_name = names
    return AttentionSite(prefix, q_name, k_name, v_name, o_name, n_heads, n_kv, head_dim, rope)


# ----------------------------------------------------------------------------------------------
# Data-free input moments
# ----------------------------------------------------------------------------------------------


def norm_moments(norm: nn.Module) -> InputMoments:
    """``Σ = diag(γ²) + β βᵀ``: the output of a norm with the normalised activations modelled as
    white (zero mean, unit variance, uncorrelated)."""
    gamma, beta = norm_affine(norm)
    if gamma is None:
        return InputMoments(source="norm")
    return InputMoments(gamma**2, None if beta is None else beta.unsqueeze(1), source="norm")


_GH_CACHE: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights for ``E[f(Z)]``, ``Z ~ N(0, 1)`` (probabilists' Hermite)."""
    if n not in _GH_CACHE:
        import numpy as np

        x, w = np.polynomial.hermite_e.hermegauss(n)
        _GH_CACHE[n] = (
            torch.tensor(x, dtype=torch.float64),
            torch.tensor(w / math.sqrt(2 * math.pi), dtype=torch.float64),
        )
    return _GH_CACHE[n]


def activation(name: str) -> Any:
    """The elementwise activation called ``name`` (HF ``hidden_act`` names)."""
    import torch.nn.functional as F

    n = name.lower()
    if n in ("silu", "swish"):
        return F.silu
    if n in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python"):
        return (lambda x: F.gelu(x, approximate="tanh")) if n != "gelu" else F.gelu
    if n == "relu":
        return F.relu
    if n == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    raise ValueError(f"activation {name!r} is not known")


def mlp_hidden_moments(
    up: torch.Tensor,
    up_bias: torch.Tensor | None,
    x_moments: InputMoments,
    act: str,
    gate: torch.Tensor | None = None,
    gate_bias: torch.Tensor | None = None,
    points: int = 24,
) -> InputMoments:
    """Moments of an MLP's hidden activations ``act(up x + b)`` (or ``act(gate x) * (up x)``) with
    ``x`` Gaussian of second moment ``diag(d) + β βᵀ`` (mean ``β``), unit by unit by Gauss-Hermite
    quadrature: ``Σ_h = diag(Var h) + E[h] E[h]ᵀ`` (cross-unit covariances other than through the
    mean are dropped)."""
    f = activation(act)
    dev = up.device
    d = x_moments.diag if x_moments.diag is not None else torch.ones(up.shape[1])
    d = d.to(dev, torch.float64)
    mu = (
        x_moments.low_rank[:, 0].to(dev, torch.float64)
        if x_moments.low_rank is not None and x_moments.low_rank.shape[1] == 1
        else torch.zeros_like(d)
    )
    U = up.double()
    m_u = U @ mu + (up_bias.double() if up_bias is not None else 0.0)
    v_u = (U**2) @ d
    z, w = (t.to(dev) for t in _gauss_hermite(points))
    if gate is None:
        s = v_u.sqrt().unsqueeze(1)
        h = f((m_u.unsqueeze(1) + s * z).float()).double()  # (n, points)
    else:
        G = gate.double()
        m_g = G @ mu + (gate_bias.double() if gate_bias is not None else 0.0)
        v_g = (G**2) @ d
        c = (G * U) @ d
        s_g = v_g.clamp_min(1e-30).sqrt()
        # u = m_u + (c / s_g) z1 + sqrt(v_u - c^2 / v_g) z2, a = m_g + s_g z1
        a = (m_g.unsqueeze(1) + s_g.unsqueeze(1) * z).unsqueeze(2)  # (n, P, 1)
        r = (c / s_g).unsqueeze(1).unsqueeze(2)
        res = (v_u - c**2 / v_g.clamp_min(1e-30)).clamp_min(0).sqrt().unsqueeze(1).unsqueeze(2)
        u = m_u.unsqueeze(1).unsqueeze(2) + r * z.view(1, -1, 1) + res * z.view(1, 1, -1)
        h = (f(a.float()).double() * u).reshape(u.shape[0], -1)
        w = (w.view(-1, 1) * w.view(1, -1)).reshape(-1)
    mean = h @ w
    second = (h**2) @ w
    var = (second - mean**2).clamp_min(0)
    return InputMoments(var.float(), mean.float().unsqueeze(1), source="mlp")


def attention_output_moments(
    v_weight: torch.Tensor,
    v_bias: torch.Tensor | None,
    x_moments: InputMoments,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
) -> InputMoments:
    """Second moment of the attention output (the input of ``o``): each head's output is a convex
    combination of value vectors, modelled by one value vector ``v = W_V x + b_V``:
    ``Σ_o = E[v vᵀ]`` (expanded to query heads under grouped-query attention)."""
    Wv = v_weight.float()
    d = x_moments.diag if x_moments.diag is not None else torch.ones(v_weight.shape[1])
    d = d.to(Wv)
    low = None if x_moments.low_rank is None else x_moments.low_rank.to(Wv)
    cols = [Wv * d.sqrt().unsqueeze(0)]
    if low is not None:
        cols.append(Wv @ low)
    F_ = torch.cat(cols, dim=1)  # (kv*hd, r): E[v vᵀ] = F Fᵀ (+ bias terms)
    if v_bias is not None:
        if low is not None and low.shape[1] == 1:
            mean = Wv @ low[:, 0] + v_bias.float()
            F_ = torch.cat([cols[0], mean.unsqueeze(1)], dim=1)
        else:
            F_ = torch.cat([F_, v_bias.float().unsqueeze(1)], dim=1)
    rep = n_heads // n_kv_heads
    F_ = (
        F_.reshape(n_kv_heads, head_dim, -1)
        .repeat_interleave(rep, 0)
        .reshape(n_heads * head_dim, -1)
    )
    eps = 1e-4 * float((F_**2).sum()) / F_.shape[0]
    return InputMoments(torch.full((F_.shape[0],), eps, device=F_.device), F_, source="attention")
