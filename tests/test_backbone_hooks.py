"""The backbone's extension API: block hooks in both towers and the text_projection argument."""

from __future__ import annotations

import pytest
import torch

from tests.method_fixtures import tiny_backbone
from zsbench.backbone import BlockHooks, deep_prompt_hooks


@pytest.fixture(scope="module")
def tiny():
    return tiny_backbone()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def test_hooks_see_every_block_in_order_and_identity_hooks_change_nothing(tiny, images):
    seen = []
    hooks = BlockHooks(before=lambda layer, h: seen.append(("before", layer, h.shape[1])),
                       after=lambda layer, h: seen.append(("after", layer, h.shape[1])))
    plain = tiny.encode_image(images, layers=(6, 24))
    hooked = tiny.encode_image(images, layers=(6, 24), hooks=hooks)
    assert seen[:3] == [("before", 1, 17), ("after", 1, 17), ("before", 2, 17)]
    assert len(seen) == 2 * tiny.vision_layers
    close(hooked.global_embedding, plain.global_embedding, atol=0)
    for layer in (6, 24):
        close(hooked.patch_tokens[layer], plain.patch_tokens[layer], atol=0)


def test_an_after_hook_records_the_residual_stream_the_backbone_returns(tiny, images):
    recorded = {}

    def record(layer, hidden):
        recorded[layer] = hidden.clone()

    features = tiny.encode_image(images, layers=(12,), token_source="residual",
                                 hooks=BlockHooks(after=record))
    close(recorded[12][:, 1:], features.patch_tokens[12])


def test_appended_vision_tokens_take_part_in_attention_but_never_count_as_patches(tiny, images):
    prompts = torch.randn(3, tiny.vision_width, generator=torch.Generator().manual_seed(1))

    def append(layer, hidden):
        if layer == 1:  # VPT-shallow: appended once, carried through every block
            return torch.cat([hidden, prompts.expand(hidden.shape[0], -1, -1)], dim=1)
        return None

    lengths = []
    plain = tiny.encode_image(images, layers=(24,))
    prompted = tiny.encode_image(images, layers=(24,), hooks=BlockHooks(
        before=append, after=lambda layer, h: lengths.append(h.shape[1])))
    assert set(lengths) == {17 + 3}
    assert prompted.patch_tokens[24].shape == plain.patch_tokens[24].shape == (2, 16, 32)
    assert not torch.allclose(prompted.patch_tokens[24], plain.patch_tokens[24], atol=1e-4)
    assert not torch.allclose(prompted.global_embedding, plain.global_embedding, atol=1e-4)


def test_a_hook_that_changes_batch_or_width_is_a_clear_error(tiny, images):
    with pytest.raises(ValueError, match="block hook at layer 1 returned hidden states of shape"):
        tiny.encode_image(images, hooks=BlockHooks(before=lambda layer, h: h[:1]))


def test_deep_prompts_are_text_hooks_and_may_be_per_image(tiny):
    ids = tiny.tokenize(["a photo of a damaged object.", "a flawless object."])
    generator = torch.Generator().manual_seed(2)
    shared = [torch.randn(4, tiny.text_width, generator=generator) for _ in range(3)]
    as_argument = tiny.encode_text(ids, deep_prompts=shared)
    as_hooks = tiny.encode_text(ids, hooks=deep_prompt_hooks(shared, n_prompts=2))
    close(as_argument, as_hooks, atol=0)
    # per-image prompts: 3 images x 2 prompts, each image its own deep prompt
    per_image = [torch.randn(3, 4, tiny.text_width, generator=generator) for _ in range(2)]
    flat = [p.repeat_interleave(2, dim=0) for p in per_image]  # [6, 4, W]
    out = tiny.encode_text(ids.repeat(3, 1), deep_prompts=flat).reshape(3, 2, -1)
    for image in range(3):
        one = tiny.encode_text(ids, deep_prompts=[p[image] for p in per_image])
        close(out[image], one)


def test_text_projection_argument_replaces_the_towers_projection_without_touching_it(tiny):
    ids = tiny.tokenize(["a damaged object."])
    frozen = tiny.model.text_projection
    before = frozen.detach().clone()
    doubled = tiny.encode_text(ids, text_projection=2 * frozen)
    close(doubled, 2 * tiny.encode_text(ids))
    trainable = torch.nn.Parameter(frozen.detach().clone())
    tiny.encode_text(ids, text_projection=trainable).sum().backward()
    assert trainable.grad is not None and frozen.grad is None
    assert torch.equal(tiny.model.text_projection, before)


def test_chained_hooks_run_in_order():
    calls = []
    first = BlockHooks(before=lambda layer, h: calls.append("a") or h + 1)
    second = BlockHooks(before=lambda layer, h: calls.append("b") or h * 2)
    chained = BlockHooks.chain(None, first, second)
    out = chained.run_before(1, torch.zeros(1, 2, 3))
    assert calls == ["a", "b"] and torch.equal(out, torch.full((1, 2, 3), 2.0))
    assert BlockHooks.chain(None, None) is None and BlockHooks.chain(first) is first


def test_a_replace_hook_runs_instead_of_the_block(tiny, images):
    ran = []

    def replace(layer, block, hidden, attn_mask):
        ran.append(layer)
        return hidden if layer == 24 else None  # skip the last block only

    skipped = tiny.encode_image(images, layers=(23, 24), token_source="residual",
                                hooks=BlockHooks(replace=replace))
    assert ran == list(range(1, 25))
    close(skipped.patch_tokens[24], skipped.patch_tokens[23], atol=0)
    plain = tiny.encode_image(images, layers=(23,), token_source="residual")
    close(skipped.patch_tokens[23], plain.patch_tokens[23], atol=0)
    # text blocks get the causal mask cut to the sequence
    masks = []
    tiny.encode_text(tiny.tokenize(["a."]), hooks=BlockHooks(
        replace=lambda layer, block, h, mask: masks.append(tuple(mask.shape))))
    assert set(masks) == {(77, 77)}


def test_exact_gelu_on_quickgelu_weights_is_a_compute_option(tiny, images):
    from open_clip.transformer import QuickGELU

    gelu = tiny.with_options(mlp_activation="gelu")
    assert gelu.model is tiny.model and tiny.mlp_activation == "native"
    # reference: the same model with every QuickGELU swapped for nn.GELU
    import copy

    swapped = copy.deepcopy(tiny)
    for module in swapped.model.modules():
        for name, child in module.named_children():
            if isinstance(child, QuickGELU):
                setattr(module, name, torch.nn.GELU())
    close(gelu.encode_image(images, layers=(12,)).patch_tokens[12],
          swapped.encode_image(images, layers=(12,)).patch_tokens[12])
    ids = tiny.tokenize(["a damaged object."])
    close(gelu.encode_text(ids), swapped.encode_text(ids))
    assert not torch.allclose(gelu.encode_text(ids), tiny.encode_text(ids), atol=1e-5)
    with pytest.raises(ValueError, match="mlp_activation 'relu' is not one of native, gelu"):
        tiny.with_options(mlp_activation="relu")


def test_an_option_added_later_keeps_earlier_identities_at_its_default():
    from zsbench.identity import method_identity
    from zsbench.method import config_to_dict, make_config

    default = method_identity("clip", config_to_dict(make_config("clip")))
    assert "mlp_activation" not in default["config"]
    quirk = method_identity("clip", config_to_dict(make_config("clip", {"mlp_activation": "gelu"})))
    assert quirk["config"]["mlp_activation"] == "gelu"
