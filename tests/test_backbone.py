"""Tests of zsbench.backbone on the tiny config with seeded random weights."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

import zsbench.backbone.loading as loading
from zsbench.backbone import (
    Backbone,
    WeightsFileInfo,
    WeightsUnavailableError,
    load_backbone,
    plan_activation,
    quickgelu_variant,
    read_state_dict,
    read_weights_file,
    resolve_weights,
)
from zsbench.method import MethodConfig

TINY = "zsbench-tiny"


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    torch.manual_seed(0)
    return load_backbone(TINY)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


def block_outputs(backbone: Backbone, images: torch.Tensor) -> list[torch.Tensor]:
    """Residual-stream outputs of every vision block of open_clip's own forward (hooks)."""
    outputs: list[torch.Tensor] = []
    handles = [block.register_forward_hook(lambda _m, _i, out: outputs.append(out))
               for block in backbone.model.visual.transformer.resblocks]
    try:
        backbone.model.encode_image(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


# -- attributes and unmodified paths ------------------------------------------------------------

def test_tiny_attributes(tiny: Backbone) -> None:
    assert TINY in open_clip.list_models()
    assert (tiny.image_size, tiny.patch_size, tiny.grid_size) == (112, 14, (8, 8))
    assert (tiny.vision_width, tiny.vision_layers) == (32, 24)
    assert (tiny.text_width, tiny.text_layers, tiny.embed_dim) == (32, 12, 32)
    assert tiny.context_length == 77
    assert tiny.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert tiny.std == pytest.approx(open_clip.OPENAI_DATASET_STD)
    assert (tiny.name, tiny.pretrained, tiny.weights_sha256) == (TINY, None, None)
    assert tiny.pos_embed_interpolation == "bilinear" and tiny.quick_gelu
    assert not any(p.requires_grad for p in tiny.parameters())
    assert not tiny.model.training
    tiny.train()
    assert not tiny.model.training


def test_global_embedding_equals_open_clip(tiny: Backbone, images: torch.Tensor) -> None:
    with torch.no_grad():
        features = tiny.encode_image(images)
        expected = tiny.model.encode_image(images)
    assert features.global_embedding.shape == (2, 32)
    assert features.patch_tokens == {}
    close(features.global_embedding, expected)


def test_global_without_ln_post(tiny: Backbone, images: torch.Tensor) -> None:
    with torch.no_grad():
        features = tiny.encode_image(images, global_ln_post=False)
        final = block_outputs(tiny, images)[-1]
    close(features.global_embedding, final[:, 0] @ tiny.model.visual.proj)


def test_encode_text_equals_open_clip(tiny: Backbone) -> None:
    ids = tiny.tokenize(["a photo of a damaged bottle.", "object.", "X X X a flawless part"])
    assert ids.shape == (3, 77) and ids.dtype == torch.int64
    with torch.no_grad():
        close(tiny.encode_text(ids), tiny.model.encode_text(ids))
        close(tiny.encode_text_features(["object."]), tiny.model.encode_text(ids[1:2]))
    embeddings = tiny.token_embedding(ids)
    assert embeddings.shape == (3, 77, 32)
    with torch.no_grad():
        close(tiny.encode_text(ids, prompt_embeddings=embeddings), tiny.model.encode_text(ids))


def test_patch_tokens_per_layer(tiny: Backbone, images: torch.Tensor) -> None:
    with torch.no_grad():
        proj = tiny.encode_image(images, layers=(6, 12, 24))
        residual = tiny.encode_image(images, layers=(1, 24), token_source="residual")
        outputs = block_outputs(tiny, images)
    visual = tiny.model.visual
    assert sorted(proj.patch_tokens) == [6, 12, 24]
    for layer in (6, 12, 24):
        expected = visual.ln_post(outputs[layer - 1][:, 1:]) @ visual.proj
        close(proj.patch_tokens[layer], expected)
    assert residual.patch_tokens[24].shape == (2, 64, 32)
    close(residual.patch_tokens[1], outputs[0][:, 1:])
    close(residual.patch_tokens[24], outputs[23][:, 1:])


# -- V-V path ------------------------------------------------------------------------------------

def attention(attn: torch.nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> torch.Tensor:
    """out_proj(softmax(q k^T / sqrt(d_head)) v) on per-head tensors [B, heads, N, d_head]."""
    weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    merged = (weights @ v).transpose(1, 2).flatten(2)
    return merged @ attn.out_proj.weight.T + attn.out_proj.bias


def reference_vv(backbone: Backbone, images: torch.Tensor, vv_from: int
                 ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """METHODS.md section 1 with the blocks' weights: (final h, V-V stream per layer)."""
    visual = backbone.model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], 1)
    h = visual.ln_pre(x + visual.positional_embedding)
    s = None
    streams = {}
    for index, block in enumerate(visual.transformer.resblocks, start=1):
        attn = block.attn
        heads, width = attn.num_heads, h.shape[-1]
        y = F.layer_norm(h, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
        q, k, v = (y @ attn.in_proj_weight.T + attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(*t.shape[:2], heads, -1).transpose(1, 2) for t in (q, k, v))
        if index >= vv_from:
            s = (h if index == vv_from else s) + attention(attn, v, v, v)
            streams[index] = s
        h = h + attention(attn, q, k, v)
        z = F.layer_norm(h, (width,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
        hidden = z @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
        hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
        h = h + hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias
    return h, streams


def test_vv_path_equals_reference(tiny: Backbone, images: torch.Tensor) -> None:
    layers = (5, 6, 12, 18, 24)
    with torch.no_grad():
        features = tiny.encode_image(images, layers=layers, vv_from=6)
        raw = tiny.encode_image(images, layers=layers, vv_from=6, token_source="residual")
        h, streams = reference_vv(tiny, images, vv_from=6)
        plain = tiny.encode_image(images, layers=(5,))
        outputs = block_outputs(tiny, images)
    visual = tiny.model.visual
    close(features.global_embedding, visual.ln_post(h[:, 0]) @ visual.proj)
    close(features.global_embedding, tiny.model.encode_image(images))
    close(features.patch_tokens[5], plain.patch_tokens[5])  # below vv_from: original path
    close(raw.patch_tokens[5], outputs[4][:, 1:])
    for layer in (6, 12, 18, 24):
        close(raw.patch_tokens[layer], streams[layer][:, 1:])
        close(features.patch_tokens[layer], visual.ln_post(streams[layer][:, 1:]) @ visual.proj)
    assert not torch.allclose(raw.patch_tokens[24], outputs[23][:, 1:], atol=1e-3)


# -- positional embedding and sizes -----------------------------------------------------------

def test_positional_embedding_resize(tiny: Backbone) -> None:
    native = tiny.model.visual.positional_embedding
    assert tiny.positional_embedding((8, 8)) is native
    resized = tiny.positional_embedding((16, 12))
    grid = native[1:].reshape(1, 8, 8, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(16, 12), mode="bilinear", align_corners=False)
    assert resized.shape == (1 + 16 * 12, 32)
    torch.testing.assert_close(resized[0], native[0], atol=0, rtol=0)
    torch.testing.assert_close(resized[1:], expected[0].permute(1, 2, 0).reshape(-1, 32),
                               atol=0, rtol=0)
    assert tiny.positional_embedding((16, 12)) is resized  # cached


@pytest.mark.parametrize("mode", ["bicubic-antialias", "bicubic"])
@pytest.mark.parametrize("grid_size", [(16, 12), (4, 4), (37, 37)])
def test_positional_embedding_bicubic_antialias(tiny: Backbone, grid_size, mode) -> None:
    """APRIL-GAN's bundled open_clip ``resize_pos_embed``: bicubic, antialias, no align_corners
    (MuSc's older one: the same without antialias)."""
    bicubic = tiny.with_options(pos_embed_interpolation=mode)
    assert bicubic.model is tiny.model and tiny.pos_embed_interpolation == "bilinear"
    native = tiny.model.visual.positional_embedding
    grid = native[1:].reshape(1, 8, 8, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=grid_size, mode="bicubic",
                             antialias=mode == "bicubic-antialias",
                             align_corners=False)[0].permute(1, 2, 0).reshape(-1, 32)
    resized = bicubic.positional_embedding(grid_size)
    torch.testing.assert_close(resized[0], native[0], atol=0, rtol=0)
    torch.testing.assert_close(resized[1:], expected, atol=0, rtol=0)
    bilinear = tiny.positional_embedding(grid_size)
    assert (resized - bilinear).abs().max() > 1e-3
    assert bicubic.positional_embedding((8, 8)) is native
    with torch.no_grad():  # the encode path uses it
        images = torch.randn(1, 3, grid_size[0] * 14, grid_size[1] * 14)
        assert not torch.allclose(bicubic.encode_image(images).global_embedding,
                                  tiny.encode_image(images).global_embedding, atol=1e-5)


def test_pos_embed_interpolation_option() -> None:
    assert MethodConfig().pos_embed_interpolation == "bilinear"
    loaded = load_backbone(TINY, image_size=56, pos_embed_interpolation="bicubic-antialias")
    assert loaded.pos_embed_interpolation == "bicubic-antialias"
    with pytest.raises(ValueError, match="pos_embed_interpolation 'nearest' is not one of "
                                         "bilinear, bicubic-antialias, bicubic"):
        load_backbone(TINY, pos_embed_interpolation="nearest")
    with pytest.raises(ValueError, match="pos_embed_interpolation 'bicubic-aa'"):
        loaded.with_options(pos_embed_interpolation="bicubic-aa")


# -- precision ---------------------------------------------------------------------------------

def all_outputs(backbone: Backbone, images: torch.Tensor) -> list[torch.Tensor]:
    ids = backbone.tokenize(["a photo of a damaged object.", "object."])
    with torch.no_grad():
        features = backbone.encode_image(images, layers=(6, 24), vv_from=6)
        residual = backbone.encode_image(images, layers=(12,), token_source="residual")
        return [features.global_embedding, features.patch_tokens[6], features.patch_tokens[24],
                residual.patch_tokens[12], backbone.encode_text(ids),
                backbone.encode_text(ids, prompt_embeddings=backbone.token_embedding(ids)),
                backbone.encode_windows(images, torch.tensor([[0, 1, 8, 9]]))]


def test_fp32_ignores_an_enclosing_autocast(tiny: Backbone, images: torch.Tensor) -> None:
    assert tiny.precision == "fp32"
    expected = all_outputs(tiny, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = all_outputs(tiny, images)
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16  # restored after the calls
        assert torch.is_autocast_enabled("cpu")
    for got, want in zip(inside, expected, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    # inputs made in bf16 by a caller's autocast are computed in fp32 too
    ids = tiny.tokenize(["object."])
    with torch.no_grad():
        torch.testing.assert_close(
            tiny.encode_image(images.bfloat16()).global_embedding,
            tiny.encode_image(images.bfloat16().float()).global_embedding, atol=0, rtol=0)
        torch.testing.assert_close(
            tiny.encode_text(ids, prompt_embeddings=tiny.token_embedding(ids).bfloat16()),
            tiny.encode_text(ids, prompt_embeddings=tiny.token_embedding(ids).bfloat16().float()),
            atol=0, rtol=0)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_low_precision_autocasts_on_cpu(tiny: Backbone, images: torch.Tensor, precision: str,
                                        dtype: torch.dtype) -> None:
    low = tiny.with_options(precision=precision)
    assert low.model is tiny.model and tiny.precision == "fp32"
    seen: list[torch.dtype] = []
    block = tiny.model.visual.transformer.resblocks[0]
    handle = block.mlp.c_fc.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        expected = all_outputs(tiny, images)
        got = all_outputs(low, images)
        with torch.autocast("cpu", dtype=torch.bfloat16 if dtype == torch.float16
                            else torch.float16):  # its own dtype wins over an enclosing one
            again = all_outputs(low, images)
    finally:
        handle.remove()
    assert seen == [torch.float32] * 3 + [dtype] * 6  # 3 vision passes per all_outputs()
    for low_out, fp32_out, nested in zip(got, expected, again, strict=True):
        assert low_out.dtype == torch.float32
        assert not torch.equal(low_out, fp32_out)
        torch.testing.assert_close(low_out, fp32_out, atol=0.1, rtol=0.1)
        torch.testing.assert_close(nested, low_out, atol=0, rtol=0)


def test_autocast_on_a_device_without_it() -> None:
    meta = load_backbone(TINY).to("meta")
    assert meta.device.type == "meta"
    with meta.autocast():  # fp32: nothing to disable
        pass
    with pytest.raises(RuntimeError, match="precision 'bf16' needs torch.bfloat16 autocast on "
                                           "device 'meta'.*use precision 'fp32'"):
        meta.with_options(precision="bf16").autocast()


def test_other_input_sizes(tiny: Backbone) -> None:
    images = torch.randn(1, 3, 224, 168)
    with torch.no_grad():
        features = tiny.encode_image(images, layers=(24,), vv_from=6)
    assert features.patch_tokens[24].shape == (1, 16 * 12, 32)
    assert features.global_embedding.shape == (1, 32)
    with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
        tiny.encode_image(torch.randn(1, 3, 115, 112))
    with pytest.raises(ValueError, match=r"image_size 100 must be a positive multiple .* 14"):
        load_backbone(TINY, image_size=100)
    assert load_backbone(TINY, image_size=224).grid_size == (16, 16)


def test_bad_arguments(tiny: Backbone, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"layers \[25\] out of range 1..24"):
        tiny.encode_image(images, layers=(24, 25))
    with pytest.raises(ValueError, match="vv_from=0"):
        tiny.encode_image(images, vv_from=0)
    with pytest.raises(ValueError, match="token_source 'cls'"):
        tiny.encode_image(images, token_source="cls")
    with pytest.raises(ValueError, match="precision 'fp8'"):
        load_backbone(TINY, precision="fp8")
    with pytest.raises(ValueError, match="Unknown open_clip model 'zsbench-tiyn'.*zsbench-tiny"):
        load_backbone("zsbench-tiyn")


# -- windows -----------------------------------------------------------------------------------

def test_encode_windows(tiny: Backbone, images: torch.Tensor) -> None:
    everything = torch.arange(64).unsqueeze(0)
    pairs = torch.tensor([[0, 1, 8, 9], [9, 10, 17, 18], [54, 55, 62, 63]])
    with torch.no_grad():
        full = tiny.encode_windows(images, everything)
        windows = tiny.encode_windows(images, pairs)
        chunked = tiny.encode_windows(images, pairs, max_tokens_per_chunk=1)
        single = tiny.encode_windows(images, pairs[1:2])
        global_embedding = tiny.encode_image(images).global_embedding
    assert full.shape == (2, 1, 32) and windows.shape == (2, 3, 32)
    close(full[:, 0], global_embedding)
    close(chunked, windows)
    close(single[:, 0], windows[:, 1])
    assert not torch.allclose(windows[:, 0], windows[:, 2], atol=1e-4)
    with pytest.raises(ValueError, match="0..63"):
        tiny.encode_windows(images, torch.tensor([[0, 64]]))


# -- text: deep prompts -------------------------------------------------------------------------

def text_block_inputs(backbone: Backbone, ids: torch.Tensor, deep_prompts: list[torch.Tensor]
                      ) -> list[torch.Tensor]:
    inputs: list[torch.Tensor] = []
    handles = [block.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].clone()))
               for block in backbone.model.transformer.resblocks]
    try:
        backbone.encode_text(ids, deep_prompts=deep_prompts)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def test_deep_prompts_replace_positions(tiny: Backbone) -> None:
    # same first 5 tokens: with the causal mask, hidden positions 1..4 agree between prompts
    ids = tiny.tokenize(["X X X X object.", "X X X X damaged object."])
    with torch.no_grad():
        plain_inputs = text_block_inputs(tiny, ids, [])
        plain = tiny.encode_text(ids)
        own_values = [plain_inputs[layer][0, 1:5] for layer in range(1, 9)]
        torch.testing.assert_close(plain_inputs[3][0, 1:5], plain_inputs[3][1, 1:5])
        close(tiny.encode_text(ids, deep_prompts=own_values), plain, atol=1e-6)

        prompts = [torch.randn(4, 32) for _ in range(8)]
        inputs = text_block_inputs(tiny, ids, prompts)
        changed = tiny.encode_text(ids, deep_prompts=prompts)
    assert not torch.allclose(changed, plain, atol=1e-4)
    torch.testing.assert_close(inputs[1][:, 0], plain_inputs[1][:, 0])  # SOT untouched
    torch.testing.assert_close(inputs[1][:, 5:], plain_inputs[1][:, 5:])  # block 1 unchanged
    for layer in range(1, 9):  # blocks 2..9 (1-indexed) see the prompts at positions 1..4
        torch.testing.assert_close(inputs[layer][:, 1:5], prompts[layer - 1].expand(2, 4, 32))
    assert not torch.allclose(inputs[9][:, 1:5], prompts[7].expand(2, 4, 32), atol=1e-4)
    with pytest.raises(ValueError, match="12 deep prompts but only 11"):
        tiny.encode_text(ids, deep_prompts=[torch.zeros(4, 32)] * 12)
    with pytest.raises(ValueError, match=r"deep prompt 0 must have shape \[n, 32\]"):
        tiny.encode_text(ids, deep_prompts=[torch.zeros(4, 16)])


# -- weights files -------------------------------------------------------------------------------

def test_state_dict_file_round_trip(tiny: Backbone, images: torch.Tensor, tmp_path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny.model.state_dict().items()}},
               path)
    torch.manual_seed(123)
    loaded = load_backbone(TINY, pretrained=str(path))
    assert loaded.pretrained == str(path)
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images, layers=(6,), vv_from=6),
                                   tiny.encode_image(images, layers=(6,), vv_from=6),
                                   atol=0, rtol=0)
        ids = tiny.tokenize(["object."])
        torch.testing.assert_close(loaded.encode_text(ids), tiny.encode_text(ids), atol=0, rtol=0)


def write_openai_archive(state: dict[str, torch.Tensor], path: Path,
                         input_resolution: int = 112) -> Path:
    """An OpenAI-style TorchScript archive: a ScriptModule whose state dict holds the CLIP
    tensors under OpenAI's names plus the non-parameter entries (built from bare containers:
    fast to script)."""
    root = torch.nn.Module()
    state = dict(state)
    state.update(input_resolution=torch.tensor(input_resolution), context_length=torch.tensor(77),
                 vocab_size=torch.tensor(49408))
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))
    return path


def test_openai_torchscript_archive(tiny: Backbone, images: torch.Tensor, tmp_path) -> None:
    path = write_openai_archive(tiny.model.state_dict(), tmp_path / "ViT-tiny.pt")
    read, info = read_weights_file(path)
    assert read_state_dict(path).keys() == read.keys()
    assert "input_resolution" not in read and "vocab_size" not in read
    assert set(read) == set(tiny.model.state_dict())
    assert info == WeightsFileInfo(torchscript=True, openai_entries=True, openai_layout=True)
    loaded = load_backbone(TINY, pretrained=path)
    assert loaded.name == TINY and loaded.quick_gelu  # the tiny config has QuickGELU already
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images).global_embedding,
                                   tiny.encode_image(images).global_embedding, atol=0, rtol=0)


def test_weights_identified_by_sha256(tiny: Backbone, tmp_path) -> None:
    state = tiny.model.state_dict()
    first, second = tmp_path / "a" / "weights.pt", tmp_path / "b" / "copy.pt"
    first.parent.mkdir()
    second.parent.mkdir()
    torch.save(state, first)
    second.write_bytes(first.read_bytes())  # torch.save records the file name: copy the bytes
    changed = tmp_path / "c" / "weights.pt"
    changed.parent.mkdir()
    torch.save({**state, "logit_scale": state["logit_scale"] + 1}, changed)
    shas = [load_backbone(TINY, pretrained=path).weights_sha256 for path in (first, second,
                                                                            changed)]
    assert shas[0] == shas[1] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert shas[2] == hashlib.sha256(changed.read_bytes()).hexdigest() != shas[0]


def test_mismatched_or_corrupt_file(tmp_path) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pt.*does not fit.*missing"):
        load_backbone(TINY, pretrained=str(wrong))
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"Cannot read weights file .*corrupt\.bin"):
        load_backbone(TINY, pretrained=str(corrupt))


@pytest.mark.parametrize("value", ["/no/such/dir/weights.pt", "weights.safetensors",
                                   "checkpoints/clip"])
def test_missing_file_names_the_path(value: str) -> None:
    with pytest.raises(FileNotFoundError, match=value.replace(".", r"\.")):
        load_backbone(TINY, pretrained=value)


def test_unknown_tag_lists_known_tags() -> None:
    with pytest.raises(ValueError, match=r"Unknown pretrained tag 'nonsense'.*openai.*laion2b"):
        load_backbone("ViT-B-32", pretrained="nonsense")
    with pytest.raises(ValueError, match="known tags: none"):
        load_backbone(TINY, pretrained="openai")


# -- tags without network ----------------------------------------------------------------------

@pytest.fixture
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "_cached_weights", lambda cfg: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("open_clip download must not be attempted")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", forbidden)


def test_unreachable_network_fails_with_help(no_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(address, timeout=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(loading.socket, "create_connection", refuse)
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("ViT-L-14-336-quickgelu", pretrained="openai", image_size=518)
    message = str(info.value)
    assert "huggingface.co" in message and "vit_large_patch14_clip_336.openai" in message
    assert "pretrained='/path/to/file'" in message and "unreachable" in message
    assert "--pretrained /path/to/file" in info.value.cli_message  # the CLI names its option


def test_hanging_network_probe_times_out(no_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hang(address, timeout=None):
        release.wait()
        raise OSError("released")

    monkeypatch.setattr(loading.socket, "create_connection", hang)
    monkeypatch.setattr(loading, "NETWORK_PROBE_TIMEOUT_S", 0.05)
    try:
        with pytest.raises(WeightsUnavailableError, match="unreachable"):
            resolve_weights("ViT-B-32", "openai")
    finally:
        release.set()


def test_hf_offline_fails_without_probe(no_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("no connection attempt when HF_HUB_OFFLINE is set")

    monkeypatch.setattr(loading.socket, "create_connection", forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE.*pretrained="):
        resolve_weights("ViT-B-32", "openai")


def test_cached_tag_needs_no_network(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import huggingface_hub.constants as hf_constants

    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached file needs no network")

    monkeypatch.setattr(loading.socket, "create_connection", forbidden)
    path, tag_config = resolve_weights("ViT-B-32", "openai")
    assert path == snapshot / "open_clip_model.safetensors"
    assert tag_config["mean"] == open_clip.OPENAI_DATASET_MEAN


# -- activation: QuickGELU for OpenAI weights ----------------------------------------------------

def _skip_random_init(patch: pytest.MonkeyPatch) -> None:
    """Building ViT-B-32 spends seconds in random init; every tensor is then overwritten by the
    weights file loaded strictly right after, so the tests skip the init."""
    patch.setattr(torch.Tensor, "uniform_", lambda self, *args, **kwargs: self)
    patch.setattr(torch.Tensor, "normal_", lambda self, *args, **kwargs: self)


@pytest.fixture
def fast_init(monkeypatch: pytest.MonkeyPatch) -> None:
    _skip_random_init(monkeypatch)


@pytest.fixture(scope="module")
def vit_b32_files(tmp_path_factory) -> dict[str, Path]:
    """ViT-B-32 weights (zeros in fp16, as OpenAI ships fp16) as a plain state dict with OpenAI's
    key names and as an OpenAI TorchScript archive: only the format matters here."""
    with pytest.MonkeyPatch.context() as patch:
        _skip_random_init(patch)
        with loading._without_random_init_notice():
            model = open_clip.create_model("ViT-B-32")
    state = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("vit_b32")
    torch.save(state, folder / "vit_b32_state_dict.pt")
    write_openai_archive(state, folder / "ViT-B-32.pt", input_resolution=224)
    return {"state_dict": folder / "vit_b32_state_dict.pt", "torchscript": folder / "ViT-B-32.pt"}


def activations(backbone: Backbone) -> set[type]:
    """The activation module types of every vision and text block."""
    towers = (backbone.model.visual.transformer, backbone.model.transformer)
    return {type(block.mlp.gelu) for tower in towers for block in tower.resblocks}


@pytest.fixture
def cached_tag_file(monkeypatch: pytest.MonkeyPatch, vit_b32_files) -> Path:
    """Every open_clip tag resolves to the local ViT-B-32 state dict (no network)."""
    path = vit_b32_files["state_dict"]
    monkeypatch.setattr(loading, "_cached_weights", lambda tag_config: path)
    return path


@pytest.mark.slow
def test_openai_tag_builds_the_quickgelu_variant(fast_init, cached_tag_file,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zsbench.backbone.loading"):
        backbone = load_backbone("ViT-B-32", pretrained="openai")
    assert activations(backbone) == {QuickGELU} and backbone.quick_gelu
    assert backbone.name == "ViT-B-32-quickgelu"  # what really ran, for the results
    assert backbone.pretrained == "openai"
    assert backbone.weights_sha256 == hashlib.sha256(cached_tag_file.read_bytes()).hexdigest()
    assert "model 'ViT-B-32' uses GELU" in caplog.text
    assert "pretrained tag 'openai' was trained with QuickGELU" in caplog.text
    assert "building 'ViT-B-32-quickgelu'" in caplog.text


@pytest.mark.slow
def test_quickgelu_name_keeps_quickgelu(fast_init, cached_tag_file,
                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zsbench.backbone.loading"):
        backbone = load_backbone("ViT-B-32-quickgelu", pretrained="openai")
    assert activations(backbone) == {QuickGELU}
    assert backbone.name == "ViT-B-32-quickgelu"
    assert caplog.records == []


@pytest.mark.slow
def test_non_openai_tag_stays_gelu(fast_init, cached_tag_file,
                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zsbench.backbone.loading"):
        backbone = load_backbone("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert activations(backbone) == {torch.nn.GELU} and not backbone.quick_gelu
    assert backbone.name == "ViT-B-32"
    assert caplog.records == []


@pytest.mark.slow
@pytest.mark.parametrize("kind, evidence", [
    ("torchscript", "an OpenAI TorchScript archive"),
    ("state_dict", "has the OpenAI CLIP key layout"),
])
def test_openai_format_files_run_with_quickgelu(fast_init, vit_b32_files, kind: str,
                                                evidence: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = vit_b32_files[kind]
    with caplog.at_level(logging.WARNING, logger="zsbench.backbone.loading"):
        backbone = load_backbone("ViT-B-32", pretrained=path)
    assert activations(backbone) == {QuickGELU}
    assert backbone.name == "ViT-B-32-quickgelu"
    assert backbone.pretrained == str(path)
    assert backbone.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert str(path) in caplog.text and evidence in caplog.text


def test_quickgelu_variant_names() -> None:
    assert quickgelu_variant("ViT-L-14-336") == ("ViT-L-14-336-quickgelu", False)
    assert quickgelu_variant("ViT-L-14-336-quickgelu") == ("ViT-L-14-336-quickgelu", False)
    assert quickgelu_variant(TINY) == (TINY, False)  # its config has quick_gelu already
    assert quickgelu_variant("ViT-B-32-256") == ("ViT-B-32-256", True)  # no registered variant


def test_plan_activation_for_tags() -> None:
    config = open_clip.get_model_config("ViT-L-14-336")
    tag_config = open_clip.get_pretrained_cfg("ViT-L-14-336", "openai")
    plan = plan_activation("ViT-L-14-336", config, tag="openai", tag_config=tag_config)
    assert (plan.model_name, plan.force_quick_gelu, plan.quick_gelu) == (
        "ViT-L-14-336-quickgelu", False, True)
    assert "'ViT-L-14-336'" in plan.note and "'ViT-L-14-336-quickgelu'" in plan.note
    # no -quickgelu config registered: open_clip's force_quick_gelu, under the asked-for name
    plan = plan_activation("ViT-B-32-256", open_clip.get_model_config("ViT-B-32-256"),
                           tag="openai", tag_config={"quick_gelu": True})
    assert (plan.model_name, plan.force_quick_gelu, plan.quick_gelu) == (
        "ViT-B-32-256", True, True)
    assert "force_quick_gelu=True" in plan.note
    # a GELU tag for a QuickGELU config is an error naming both
    with pytest.raises(ValueError, match=r"model 'ViT-B-32-quickgelu' uses QuickGELU .* "
                                         r"pretrained tag 'gelu_tag' was trained with GELU; "
                                         r"use model 'ViT-B-32'"):
        plan_activation("ViT-B-32-quickgelu", open_clip.get_model_config("ViT-B-32-quickgelu"),
                        tag="gelu_tag", tag_config={"quick_gelu": False})
    with pytest.raises(ValueError, match="quick_gelu=False contradicts.*pretrained tag 'openai'"):
        plan_activation("ViT-L-14-336", config, tag="openai", tag_config=tag_config,
                        quick_gelu=False)


def test_plan_activation_for_files() -> None:
    b32 = open_clip.get_model_config("ViT-B-32")
    archive = WeightsFileInfo(torchscript=True, openai_entries=True, openai_layout=True)
    layout = WeightsFileInfo(torchscript=False, openai_entries=False, openai_layout=True)
    other = WeightsFileInfo(torchscript=False, openai_entries=False, openai_layout=False)
    assert plan_activation("ViT-B-32", b32, weights_file="w.pt", file_info=archive).model_name \
        == "ViT-B-32-quickgelu"
    # state dict taken from an OpenAI archive (its non-parameter entries kept)
    extracted = WeightsFileInfo(torchscript=False, openai_entries=True, openai_layout=True)
    assert plan_activation("ViT-B-32", b32, weights_file="w.pt", file_info=extracted).quick_gelu
    # the key layout alone is an assumption that quick_gelu=False overrides; a certain OpenAI
    # file is not
    gelu = plan_activation("ViT-B-32", b32, weights_file="w.pt", file_info=layout,
                           quick_gelu=False)
    assert (gelu.model_name, gelu.quick_gelu, gelu.note) == ("ViT-B-32", False, None)
    with pytest.raises(ValueError, match=r"quick_gelu=False contradicts the weights: weights "
                                         r"file 'w.pt' \(an OpenAI TorchScript archive\)"):
        plan_activation("ViT-B-32", b32, weights_file="w.pt", file_info=archive,
                        quick_gelu=False)
    # no OpenAI weights exist for ViT-H-14: its config decides
    h14 = open_clip.get_model_config("ViT-H-14")
    plan = plan_activation("ViT-H-14", h14, weights_file="w.pt", file_info=layout)
    assert (plan.model_name, plan.quick_gelu, plan.note) == ("ViT-H-14", False, None)
    assert not plan_activation("ViT-B-32", b32, weights_file="w.pt", file_info=other).quick_gelu
    assert plan_activation("ViT-B-32", b32).model_name == "ViT-B-32"  # random weights
    tiny = plan_activation(TINY, open_clip.get_model_config(TINY), weights_file="w.pt",
                           file_info=archive)
    assert (tiny.model_name, tiny.force_quick_gelu, tiny.note) == (TINY, False, None)

