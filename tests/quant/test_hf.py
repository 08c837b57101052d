"""transformers round trip: save_pretrained -> from_pretrained (fresh process), refusals, casts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import coreopt
from coreopt.quant import QuantizedLinear, save_quantized

transformers = pytest.importorskip("transformers")

FAST: dict[str, Any] = {"steps": 3, "dual_steps": 3, "progress": False}
IDS = torch.arange(3, 13).view(1, 10)


def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=IDS)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


FRESH = textwrap.dedent(
    """
    import sys, torch
    import coreopt.quant  # registers quant_method "coreopt" with transformers
    from coreopt.quant import QuantizedLinear, load_quantized
    import transformers
    root = sys.argv[1]
    ids = torch.arange(3, 13).view(1, 10)
    for name, auto in [("llama", "AutoModelForCausalLM"), ("bert", "AutoModel"),
                       ("gpt2", "AutoModelForCausalLM")]:
        model = getattr(transformers, auto).from_pretrained(f"{root}/{name}")
        n = sum(isinstance(m, QuantizedLinear) for m in model.modules())
        with torch.no_grad():
            out = model(input_ids=ids)
        y = out.logits if hasattr(out, "logits") else out.last_hidden_state
        torch.save({"y": y, "n": n}, f"{root}/{name}.out.pt")
    # save_quantized -> load_quantized into a fresh architecture
    cfg = transformers.AutoConfig.from_pretrained(f"{root}/llama")
    del cfg.quantization_config
    torch.manual_seed(123)
    fresh = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    load_quantized(fresh, f"{root}/llama.safetensors")
    with torch.no_grad():
        torch.save({"y": fresh(input_ids=ids).logits}, f"{root}/llama-file.out.pt")
    """
)


@pytest.mark.slow
def test_save_pretrained_from_pretrained_in_a_fresh_process(
    tmp_path: Path, tiny_hf_model: Callable[..., Any]
) -> None:
    models = {
        "llama": tiny_hf_model("llama", tie_word_embeddings=True).eval(),
        "bert": tiny_hf_model("bert").eval(),
        "gpt2": tiny_hf_model("gpt2").eval(),
    }
    expected = {}
    for name, model in models.items():
        coreopt.quantize(model, bits=3, group_size=32, **FAST)
        expected[name] = (_logits(model), len(model.quantization_report.layers))
        model.save_pretrained(tmp_path / name)
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert cfg["quantization_config"]["quant_method"] == "coreopt"
    save_quantized(models["llama"], tmp_path / "llama.safetensors")
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, (y, n) in expected.items():
        got = torch.load(tmp_path / f"{name}.out.pt")
        assert got["n"] == n
        torch.testing.assert_close(got["y"], y, rtol=0, atol=0)  # identical outputs
    got = torch.load(tmp_path / "llama-file.out.pt")
    torch.testing.assert_close(got["y"], expected["llama"][0], rtol=0, atol=0)


def _saved_llama(tmp_path: Path, tiny_hf_model: Callable[..., Any]) -> Any:
    """A tiny Llama quantized to 4 bits (RTN) and saved with save_pretrained in ``tmp_path``."""
    model = tiny_hf_model("llama").eval()
    coreopt.quantize(model, bits=4, group_size=32, method="rtn", progress=False)
    model.save_pretrained(tmp_path)
    return model


def test_from_pretrained_refuses_a_checkpoint_missing_a_layer(
    tmp_path: Path, tiny_hf_model: Callable[..., Any]
) -> None:
    from safetensors.torch import load_file, save_file

    _saved_llama(tmp_path, tiny_hf_model)
    (path,) = tmp_path.glob("*.safetensors")
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.down_proj.qweight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"down_proj\.qweight"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)


def test_from_pretrained_refuses_a_layer_of_another_shape(
    tmp_path: Path, tiny_hf_model: Callable[..., Any]
) -> None:
    _saved_llama(tmp_path, tiny_hf_model)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"]["layers"]["model.layers.0.mlp.up_proj"]["out_features"] = 256
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="up_proj"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)


def test_loaded_model_casts_and_moves_consistently(
    tmp_path: Path, tiny_hf_model: Callable[..., Any]
) -> None:
    _saved_llama(tmp_path, tiny_hf_model)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    layer = loaded.model.layers[0].mlp.up_proj
    assert isinstance(layer, QuantizedLinear)
    ref = _logits(loaded)
    scale = layer.scale.clone()
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.to("cpu")):
        cast(loaded)
        assert layer.scale.dtype == torch.float16
        assert torch.equal(layer.scale, scale)  # stored metadata untouched by the cast
        out = _logits(loaded).float()
        assert float((out - ref).norm() / ref.norm()) < 0.05
    loaded.float()  # the float parts went through float16; the quantized layers did not
    fresh = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    for (n, a), (_, b) in zip(loaded.named_buffers(), fresh.named_buffers(), strict=True):
        if n.endswith(("qweight", "scale", "zero", "transform")):
            assert torch.equal(a, b), n
    # the loaded model saves again, with its quantization_config
    loaded.save_pretrained(tmp_path / "again")
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert set(cfg["quantization_config"]["layers"]) == {
        n for n, m in loaded.named_modules() if isinstance(m, QuantizedLinear)
    }
