"""Backbone: prompt-capable towers equal open_clip without prompts, prompt semantics, loading errors, precision."""

from __future__ import annotations

import time

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from dplbench.backbone import Backbone, BackboneConfig, create_backbone, splice_context  # noqa: E402
from dplbench.backbone import loading, towers  # noqa: E402
from dplbench.errors import ConfigError, DplbenchError, UnknownNameError, WeightsNotFoundError  # noqa: E402

TEXTS = ["a photo of a cat.", "X X X X dog.", "a photo of a very large red fire truck on a street."]


@pytest.fixture(scope="module")
def tiny_name(register_tiny_clip) -> str:
    return register_tiny_clip(3)  # 3 blocks per tower: prompt depths 1, 2 and 3 are all distinguishable


def _tiny_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None)


@pytest.fixture(scope="module")
def tiny(tiny_name) -> Backbone:
    return Backbone.from_model(_tiny_model(tiny_name), name=tiny_name, precision="fp32", device="cpu")


def _images(backbone: Backbone, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=g)


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---- equality with open_clip ------------------------------------------------------------------------------------
def test_tiny_towers_equal_open_clip(tiny):
    ids = tiny.tokenize(TEXTS)
    imgs = _images(tiny, 3)
    with torch.no_grad():
        ref_text, ref_img = tiny.model.encode_text(ids), tiny.model.encode_image(imgs)
        _close(tiny.encode_text(ids).features, ref_text)
        _close(tiny.encode_text(ids, truncate=False).features, ref_text)
        _close(tiny.encode_image(imgs).features, ref_img)
        # the explicit-attention path used for captured layers is the same computation
        _close(tiny.encode_text(ids, capture=True).features, ref_text)
        _close(tiny.encode_image(imgs, capture=True).features, ref_img)
        _close(tiny.frozen_text_features(ids), ref_text)
        _close(tiny.frozen_image_features(imgs), ref_img)


def test_toy_conv_stem_model_equals_open_clip():
    toy = pytest.importorskip("dplbench.toy.model")
    torch.manual_seed(0)
    b = Backbone.from_model(toy.build_toy_clip(), name="toy", precision="fp32", device="cpu")
    assert isinstance(b.model.visual.conv1, torch.nn.Sequential)
    imgs, ids = _images(b, 2), b.tokenize(TEXTS[:2])
    with torch.no_grad():
        _close(b.encode_image(imgs).features, b.model.encode_image(imgs))
        _close(b.encode_text(ids).features, b.model.encode_text(ids))


def test_vit_b16_towers_equal_open_clip(vitb16):
    assert type(vitb16.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert (vitb16.text_width, vitb16.vision_width, vitb16.text_layers, vitb16.vision_layers) == (512, 768, 12, 12)
    assert (vitb16.text_heads, vitb16.vision_heads, vitb16.embed_dim, vitb16.image_size) == (8, 12, 512, 224)
    assert vitb16.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # random init, not 100
    ids = vitb16.tokenize(TEXTS)
    imgs = _images(vitb16, 2)
    with torch.no_grad():
        _close(vitb16.encode_text(ids).features, vitb16.model.encode_text(ids))
        _close(vitb16.encode_image(imgs).features, vitb16.model.encode_image(imgs))
        # captured layers (explicit softmax) and SDPA layers agree at real widths too
        _close(vitb16.encode_image(imgs, capture={0, 11}).features, vitb16.model.encode_image(imgs))


def _prompted_outputs(backbone: Backbone, seed: int = 0) -> dict[str, torch.Tensor]:
    """Both towers with shallow + deep prompts, a hook and captured layers 0 and 2; features, captures and the
    prompts' gradients."""
    g = torch.Generator().manual_seed(seed)
    ids = backbone.tokenize(TEXTS)
    imgs = _images(backbone, 2, seed)
    ctx, t_deep = (torch.randn(4, backbone.text_width, generator=g).requires_grad_() for _ in range(2))
    v_prompt, v_deep = (torch.randn(2, backbone.vision_width, generator=g).requires_grad_() for _ in range(2))
    hook = lambda j, h, a: h * 1.1 if a is not None else h  # noqa: E731 - touches the captured layers only
    last = backbone.text_layers - 1
    text = backbone.encode_text(ids, embeddings=splice_context(backbone.embed_tokens(ids), ctx),
                                deep_prompts=[None, t_deep], hook=hook, capture={0, last})
    image = backbone.encode_image(imgs, prompts=v_prompt, deep_prompts=[None, v_deep], hook=hook, capture={0, last})
    (image.features @ text.features.T).square().sum().backward()
    out = {"text": text.features, "image": image.features}
    for tower, result in (("text", text), ("image", image)):
        out |= {f"{tower}.attn{j}": a for j, a in result.attn.items()}
        out |= {f"{tower}.hidden{j}": h for j, h in result.hidden.items()}
    return out | {f"grad{i}": p.grad for i, p in enumerate((ctx, t_deep, v_prompt, v_deep))}


def test_fused_blocks_equal_the_open_clip_block_path(tiny, monkeypatch, legacy_run_block):
    """Fused attention (packed F.linear + SDPA / explicit softmax) == open_clip's blocks and MultiheadAttention,
    with prompts, deep prompts, a hook and captures; forward and the prompts' gradients."""
    fused = _prompted_outputs(tiny)
    monkeypatch.setattr(towers, "run_block", legacy_run_block)
    legacy = _prompted_outputs(tiny)
    assert fused.keys() == legacy.keys() and len(fused) == 2 + 8 + 4
    for key in fused:
        _close(fused[key], legacy[key])


def test_fused_blocks_do_not_call_multihead_attention(tiny, monkeypatch):
    """The speed-up is real only if nn.MultiheadAttention (transposes, expanded-weight bmm) is bypassed."""
    def forbidden(*args, **kwargs):
        raise AssertionError("nn.MultiheadAttention.forward called")

    monkeypatch.setattr(torch.nn.MultiheadAttention, "forward", forbidden)
    _prompted_outputs(tiny)


# ---- text tower: truncation, deep prompts, capture, hook ----------------------------------------------------------
def test_truncation_is_exact_in_fp64(tiny_name, tiny):
    model = _tiny_model(tiny_name).double().eval()
    ids = tiny.tokenize(TEXTS)
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(4, 32, generator=g, dtype=torch.float64)
    emb = splice_context(model.token_embedding(ids), ctx)
    deep = [None, torch.randn(4, 32, generator=g, dtype=torch.float64)]
    out = {t: towers.encode_text(model, ids, stream_dtype=torch.float64, embeddings=emb, deep_prompts=deep,
                                 capture=True, truncate=t) for t in (True, False)}
    torch.testing.assert_close(out[True].features, out[False].features, rtol=0, atol=1e-12)
    seq = int(ids.argmax(-1).max()) + 1
    assert out[True].attn[0].shape == (3, 2, seq, seq) and out[False].attn[0].shape == (3, 2, 77, 77)
    assert seq < 20


def test_splice_context_positions(tiny):
    ids = tiny.tokenize(TEXTS[:2])
    emb = tiny.embed_tokens(ids)
    ctx = torch.randn(4, tiny.text_width)
    out = splice_context(emb, ctx)
    assert torch.equal(out[:, 1:5], ctx.expand(2, -1, -1))
    assert torch.equal(out[:, 0], emb[:, 0]) and torch.equal(out[:, 5:], emb[:, 5:])
    per_row = torch.randn(2, 3, tiny.text_width)
    assert torch.equal(splice_context(emb, per_row, start=2)[:, 2:5], per_row)
    with pytest.raises(ValueError):
        splice_context(emb, torch.randn(80, tiny.text_width))


def test_text_deep_prompt_semantics(tiny):
    ids = tiny.tokenize(TEXTS)
    n, d = 4, tiny.text_width
    g = torch.Generator().manual_seed(2)
    p1, p2, p2b = (torch.randn(n, d, generator=g) for _ in range(3))
    emb = tiny.embed_tokens(ids)
    with torch.no_grad():
        base = tiny.encode_text(ids, embeddings=emb).features
        depth2 = tiny.encode_text(ids, embeddings=emb, deep_prompts=[None, p1], capture=True)
        assert not torch.allclose(depth2.features, base, atol=1e-4)  # a deep prompt at layer 1 changes the output
        # layers past the list get no replacement: an explicit None equals a shorter list,
        # and differs from re-inserting the prompt at layer 2
        _close(tiny.encode_text(ids, embeddings=emb, deep_prompts=[None, p1, None]).features, depth2.features)
        assert not torch.allclose(tiny.encode_text(ids, embeddings=emb, deep_prompts=[None, p1, p1]).features,
                                  depth2.features, atol=1e-4)
        # a prompt at layer 2 acts from block 2 on: layers 0-1 are untouched, the output changes
        a = tiny.encode_text(ids, embeddings=emb, deep_prompts=[None, p1, p2], capture=True)
        b = tiny.encode_text(ids, embeddings=emb, deep_prompts=[None, p1, p2b], capture=True)
        _close(a.hidden[1], b.hidden[1], tol=0)
        assert not torch.allclose(a.features, b.features, atol=1e-4)
        # exact placement: block 1 sees layer 0's output with positions 1..n replaced by p1
        x_in = torch.cat([depth2.hidden[0][:, :1], p1.expand(3, -1, -1), depth2.hidden[0][:, 1 + n:]], dim=1)
        x_out, _ = towers.run_block(tiny.model.transformer.resblocks[1], x_in, True, False)
        _close(x_out, depth2.hidden[1])
        # per-sample prompts [N, n, D] broadcast the same way as a shared one
        _close(tiny.encode_text(ids, embeddings=emb, deep_prompts=[None, p1.expand(3, -1, -1)]).features,
               depth2.features)
    with pytest.raises(ValueError):
        tiny.encode_text(ids, deep_prompts=[p1])            # layer 0 goes through the embeddings
    with pytest.raises(ValueError):
        tiny.encode_text(ids, deep_prompts=[None, p1, p1, p1])  # deeper than the tower


def test_text_capture_attention_is_causal_softmax(tiny):
    ids = tiny.tokenize(TEXTS)
    out = tiny.encode_text(ids, capture={0, 2})
    assert set(out.attn) == {0, 2} == set(out.hidden)
    seq = int(ids.argmax(-1).max()) + 1
    for attn in out.attn.values():
        assert attn.shape == (3, 2, seq, seq)
        _close(attn.sum(-1), torch.ones(3, 2, seq))
        assert torch.all(attn.triu(1) == 0)
    assert out.hidden[2].shape == (3, seq, tiny.text_width)
    with pytest.raises(ValueError):
        tiny.encode_text(ids, capture={5})


def test_hook_sees_every_layer_and_can_change_the_output(tiny):
    ids = tiny.tokenize(TEXTS)
    imgs = _images(tiny, 2)
    calls = []

    def record(j, hidden, attn):
        calls.append((j, None if attn is None else tuple(attn.shape)))
        return hidden

    with torch.no_grad():
        base = tiny.encode_text(ids).features
        _close(tiny.encode_text(ids, hook=record, capture={1}).features, base)
        seq = int(ids.argmax(-1).max()) + 1
        assert calls == [(0, None), (1, (3, 2, seq, seq)), (2, None)]

        def drop_token_3(j, hidden, attn):   # what token dropout does: edit the hidden states of one layer
            return hidden.index_fill(1, torch.tensor([3]), 0.0) if j == 0 else hidden

        assert not torch.allclose(tiny.encode_text(ids, hook=drop_token_3).features, base, atol=1e-4)
        vis_base = tiny.encode_image(imgs).features
        vis_calls = []
        tiny.encode_image(imgs, hook=lambda j, h, a: vis_calls.append((j, a is None)) or h, capture={0})
        assert vis_calls == [(0, False), (1, True), (2, True)]
        assert not torch.allclose(tiny.encode_image(imgs, hook=lambda j, h, a: h * 1.5 if j == 1 else h).features,
                                  vis_base, atol=1e-4)


# ---- vision tower -------------------------------------------------------------------------------------------------
def test_vision_prompts(tiny):
    imgs = _images(tiny, 2)
    g = torch.Generator().manual_seed(3)
    p0, p1, p1b = (torch.randn(2, tiny.vision_width, generator=g) for _ in range(3))
    with torch.no_grad():
        base = tiny.encode_image(imgs).features
        shallow = tiny.encode_image(imgs, prompts=p0, capture=True)
        assert not torch.allclose(shallow.features, base, atol=1e-4)
        tokens = 1 + (tiny.image_size // 8) ** 2
        assert shallow.attn[0].shape == (2, 2, tokens + 2, tokens + 2)
        deep = tiny.encode_image(imgs, prompts=p0, deep_prompts=[None, p1], capture=True)
        deep_b = tiny.encode_image(imgs, prompts=p0, deep_prompts=[None, p1b], capture=True)
        assert not torch.allclose(deep.features, deep_b.features, atol=1e-4)
        _close(deep.hidden[0], deep_b.hidden[0], tol=0)
        # block 1 sees layer 0's output with its last n tokens replaced
        x_in = torch.cat([deep.hidden[0][:, :-2], p1.expand(2, -1, -1)], dim=1)
        x_out, _ = towers.run_block(tiny.model.visual.transformer.resblocks[1], x_in, False, False)
        _close(x_out, deep.hidden[1])
    with pytest.raises(ValueError):
        tiny.encode_image(imgs, deep_prompts=[None, p1])                       # no layer-0 prompts
    with pytest.raises(ValueError):
        tiny.encode_image(imgs, prompts=p0, deep_prompts=[None, torch.randn(3, tiny.vision_width)])


def test_gradients_reach_only_the_prompts(tiny):
    ids = tiny.tokenize(TEXTS)
    imgs = _images(tiny, 2)
    ctx = torch.randn(4, tiny.text_width, requires_grad=True)
    text_deep = torch.randn(4, tiny.text_width, requires_grad=True)
    vis = torch.randn(2, tiny.vision_width, requires_grad=True)
    vis_deep = torch.randn(2, tiny.vision_width, requires_grad=True)
    emb = splice_context(tiny.embed_tokens(ids), ctx)
    t = tiny.encode_text(ids, embeddings=emb, deep_prompts=[None, text_deep], capture={1}).features
    v = tiny.encode_image(imgs, prompts=vis, deep_prompts=[None, vis_deep]).features
    (v @ t.T).square().sum().backward()
    for p in (ctx, text_deep, vis, vis_deep):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in tiny.model.parameters())
    assert not tiny.model.training


# ---- loading -----------------------------------------------------------------------------------------------------
def test_missing_weights_fail_fast_with_tag_and_cache_dir(tmp_path):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone(BackboneConfig(name="ViT-B-16", pretrained="openai", cache_dir=str(tmp_path)), "cpu")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "'openai'" in msg and str(tmp_path) in msg and "backbone.checkpoint" in msg and "\n" not in msg
    # no tag given: the catalog's default tag (openai) is looked up, never a silent random init
    with pytest.raises(WeightsNotFoundError, match="openai"):
        create_backbone(BackboneConfig(name="ViT-B-16", cache_dir=str(tmp_path)), "cpu")
    with pytest.raises(WeightsNotFoundError, match="nothere.bin"):
        create_backbone(BackboneConfig(name="ViT-B-16", checkpoint=str(tmp_path / "nothere.bin")), "cpu")


def test_cached_weights_are_found_in_flat_and_hub_layouts(tmp_path):
    cfg = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "ViT-B-16.pt").write_bytes(b"x")
    assert loading.find_cached_weights("ViT-B-16", "openai", cfg, str(flat)) == flat / "ViT-B-16.pt"
    repo = tmp_path / "hub" / "models--timm--vit_base_patch16_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors").write_bytes(b"x")
    found = loading.find_cached_weights("ViT-B-16", "openai", cfg, str(tmp_path / "hub"))
    assert found.name == "open_clip_model.safetensors" and found.is_file()


def test_openai_tag_forces_quick_gelu_and_openai_normalisation(tmp_path, monkeypatch, vitb16, tiny_name):
    (tmp_path / "ViT-B-16.pt").write_bytes(b"x")
    seen = {}

    def fake_create(name, **kwargs):
        seen.update(kwargs, name=name)
        return vitb16.model

    monkeypatch.setattr(open_clip, "create_model", fake_create)
    monkeypatch.setattr(loading, "_load_weights", lambda model, path, name: seen.update(weights=path))
    b = create_backbone(BackboneConfig(name="ViT-B-16", pretrained="openai", cache_dir=str(tmp_path),
                                       precision="fp32"), "cpu")
    assert seen["force_quick_gelu"] is True and seen["pretrained"] is None and seen["weights"] == tmp_path / "ViT-B-16.pt"
    assert seen["force_preprocess_cfg"]["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert b.info()["quick_gelu"] and b.info()["pretrained"] == "openai" and b.precision == "fp32"
    # a model that is not QuickGELU is refused for OpenAI weights
    from open_clip.model import CLIP

    gelu = CLIP(**dict(open_clip.get_model_config(tiny_name), quick_gelu=False))
    monkeypatch.setattr(open_clip, "create_model", lambda name, **kw: gelu)
    with pytest.raises(DplbenchError, match="QuickGELU"):
        create_backbone(BackboneConfig(name="ViT-B-16", pretrained="openai", cache_dir=str(tmp_path)), "cpu")


def test_checkpoint_file_roundtrip(tmp_path, tiny_name):
    src = _tiny_model(tiny_name, seed=5)
    path = tmp_path / "tiny.bin"
    torch.save(src.state_dict(), path)
    b = create_backbone(BackboneConfig(name=tiny_name, checkpoint=str(path), precision="fp32"), "cpu")
    assert torch.equal(b.model.text_projection, src.text_projection)
    assert b.info()["checkpoint"] == str(path) and b.identity()["weights_file"]["size"] == path.stat().st_size
    ids = b.tokenize(TEXTS[:1])
    with torch.no_grad():
        _close(b.frozen_text_features(ids), src.encode_text(ids))
    bad = tmp_path / "bad.bin"
    torch.save({"nope": torch.zeros(1)}, bad)
    with pytest.raises(WeightsNotFoundError, match="cannot load"):
        create_backbone(BackboneConfig(name=tiny_name, checkpoint=str(bad)), "cpu")


def test_unknown_names_have_did_you_mean():
    with pytest.raises(UnknownNameError, match="did you mean 'ViT-B-16'"):
        create_backbone(BackboneConfig(name="ViT-B-61"), "cpu")
    with pytest.raises(UnknownNameError, match="did you mean 'openai'"):
        create_backbone(BackboneConfig(name="ViT-B-16", pretrained="opanai"), "cpu")
    with pytest.raises(DplbenchError, match="cannot be used for prompt learning"):
        create_backbone(BackboneConfig(name="RN50", pretrained="openai"), "cpu")
    with pytest.raises(ConfigError, match="pretrained"):
        create_backbone(BackboneConfig(name="ViT-B-16-quickgelu"), "cpu")  # no catalog default tag


def test_tokenize_rejects_text_that_would_be_cut(tiny):
    assert tiny.tokenize(["a cat"]).shape == (1, 77)
    with pytest.raises(ConfigError, match="77-token"):
        tiny.tokenize(["word " * 80])


# ---- precision and device ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fp16_faithful", "amp_bf16", "amp_fp16"])
def test_low_precision_modes_run_on_cpu(mode, tiny_name, tiny):
    b = Backbone.from_model(_tiny_model(tiny_name), name=tiny_name, precision=mode, device="cpu")
    assert b.precision == mode and b.needs_grad_scaler == (mode == "amp_fp16")
    assert b.model.transformer.resblocks[0].mlp.c_fc.weight.dtype == b.precision_mode.weight_dtype
    assert b.model.ln_final.weight.dtype == torch.float32
    ids = b.tokenize(TEXTS)
    imgs = _images(b, 2)
    ctx = torch.randn(4, b.text_width, dtype=b.prompt_dtype, requires_grad=True)
    vis = torch.randn(2, b.vision_width, dtype=b.prompt_dtype, requires_grad=True)
    t = b.encode_text(ids, embeddings=splice_context(b.embed_tokens(ids), ctx), capture={0}).features
    v = b.encode_image(imgs, prompts=vis).features
    assert t.dtype == v.dtype == torch.float32 and torch.isfinite(t).all() and torch.isfinite(v).all()
    (t.sum() + v.sum()).backward()
    assert ctx.grad is not None and ctx.grad.dtype == b.prompt_dtype and vis.grad is not None
    with torch.no_grad():   # same weights as the fp32 `tiny` fixture (same seed): close to fp32 features
        ref = tiny.encode_text(ids).features
        torch.testing.assert_close(b.frozen_text_features(ids), ref, rtol=0.05, atol=0.05)


def test_precision_and_device_resolution():
    from dplbench.backbone.precision import resolve_device, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "fp32"
    assert resolve_precision(None, torch.device("cuda")).name == "amp_bf16"
    with pytest.raises(ConfigError, match="did you mean 'amp_bf16'"):
        resolve_precision("amp_bf61", cpu)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DplbenchError, match="CUDA is not available"):
            resolve_device("cuda")
