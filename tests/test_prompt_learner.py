"""Tests of zsbench.prompt_learner on the tiny backbone with seeded random weights."""

from __future__ import annotations

import pytest
import torch

from zsbench.backbone import Backbone, load_backbone
from zsbench.prompt_learner import PromptLearner


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    torch.manual_seed(0)
    return load_backbone("zsbench-tiny")


def placeholder_ctx(backbone: Backbone, learner: PromptLearner) -> None:
    """Set every context vector to the token embedding of "X" (the placeholder itself)."""
    x_embedding = backbone.token_embedding(backbone.tokenize(["X"]))[0, 1]
    with torch.no_grad():
        learner.ctx.copy_(x_embedding.expand_as(learner.ctx))


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_parameters_and_shapes(tiny: Backbone) -> None:
    torch.manual_seed(1)
    learner = PromptLearner(tiny, ["object.", "damaged object."])
    names = dict(learner.named_parameters())
    assert sorted(names) == ["ctx"] + [f"deep_prompts.{i}" for i in range(8)]
    assert names["ctx"].shape == (2, 12, 32)
    assert all(names[f"deep_prompts.{i}"].shape == (4, 32) for i in range(8))
    assert 0.01 < names["ctx"].std().item() < 0.03
    assert learner.prompt_texts() == ["X X X X X X X X X X X X object.",
                                      "X X X X X X X X X X X X damaged object."]
    assert learner().shape == (2, 32)
    assert learner(ctx_bias=torch.zeros(32)).shape == (2, 32)
    assert learner(ctx_bias=torch.zeros(3, 32)).shape == (3, 2, 32)
    assert learner(prompts=[1]).shape == (1, 32)
    shared = PromptLearner(tiny, ["a {} photo.", "a broken {}."], n_ctx=4, shared_ctx=True,
                           deep_prompt_depth=1)
    assert shared.ctx.shape == (4, 32) and len(shared.deep_prompts) == 0
    assert shared(["cat", "dog", "bottle"]).shape == (3, 2, 32)
    assert shared(["cat", "dog"], ctx_bias=torch.zeros(5, 32)).shape == (5, 2, 2, 32)


def test_placeholder_ctx_reproduces_plain_text(tiny: Backbone) -> None:
    learner = PromptLearner(tiny, ["object.", "a {} with damage."], n_ctx=3,
                            deep_prompt_depth=0)
    placeholder_ctx(tiny, learner)
    with torch.no_grad():
        out = learner(["bottle", "screw"])
        expected = tiny.encode_text_features(["X X X object.", "X X X a bottle with damage.",
                                              "X X X object.", "X X X a screw with damage."])
    close(out.reshape(4, 32), expected)


def test_ctx_replaces_only_placeholder_positions(tiny: Backbone) -> None:
    torch.manual_seed(2)
    learner = PromptLearner(tiny, ["object.", "damaged object."], n_ctx=2, deep_prompt_depth=0)
    ids = tiny.tokenize(learner.prompt_texts())
    embeddings = tiny.token_embedding(ids).clone()
    embeddings[:, 1:3] = learner.ctx.detach()
    with torch.no_grad():
        close(learner(), tiny.encode_text(ids, prompt_embeddings=embeddings))


def test_deep_prompts_act_through_backbone(tiny: Backbone) -> None:
    torch.manual_seed(3)
    learner = PromptLearner(tiny, ["object.", "damaged object."], n_ctx=4, deep_prompt_depth=9)
    placeholder_ctx(tiny, learner)
    ids = tiny.tokenize(learner.prompt_texts())
    with torch.no_grad():
        expected = tiny.encode_text(ids, deep_prompts=list(learner.deep_prompts))
        close(learner(), expected)
        assert not torch.allclose(learner(), tiny.encode_text(ids), atol=1e-4)


def test_ctx_bias_matches_shifted_ctx(tiny: Backbone) -> None:
    torch.manual_seed(4)
    learner = PromptLearner(tiny, ["object.", "damaged object."], n_ctx=3)
    bias = torch.randn(2, 32) * 0.1
    with torch.no_grad():
        batched = learner(ctx_bias=bias)
        close(learner(ctx_bias=torch.zeros(32)), learner())
        for b in range(2):
            close(batched[b], learner(ctx_bias=bias[b]))
        learner.ctx.add_(bias[1])
        close(batched[1], learner())
    assert not torch.allclose(batched[0], batched[1], atol=1e-4)


def test_gradients_reach_only_learnable_parameters(tiny: Backbone) -> None:
    torch.manual_seed(5)
    learner = PromptLearner(tiny, ["object.", "damaged object."])
    learner(ctx_bias=torch.randn(2, 32)).pow(2).sum().backward()
    for name, parameter in learner.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in tiny.parameters())
    assert not any(name.startswith("backbone") for name in learner.state_dict())


def test_ctx_groups_share_parameters(tiny: Backbone) -> None:
    torch.manual_seed(6)
    groups = [[("normal", 5)]] + [[("normal", 5), (f"abnormal{i}", 2)] for i in range(3)]
    learner = PromptLearner(tiny, ["object."] + ["damaged object."] * 3, ctx_groups=groups)
    assert learner.ctx is None and learner.n_ctx == [5, 7, 7, 7]
    assert sorted(dict(learner.named_parameters())) == sorted(
        ["ctx_group.normal", "ctx_group.abnormal0", "ctx_group.abnormal1",
         "ctx_group.abnormal2"] + [f"deep_prompts.{i}" for i in range(8)])
    contexts = learner.context_vectors()
    torch.testing.assert_close(contexts[2][:5], contexts[0])
    assert learner().shape == (4, 32)
    learner(prompts=[2]).sum().backward()
    assert learner.ctx_group["normal"].grad.abs().sum() > 0
    assert learner.ctx_group["abnormal1"].grad.abs().sum() > 0
    assert learner.ctx_group["abnormal0"].grad is None
    with pytest.raises(ValueError, match="ctx group 'normal' has inconsistent"):
        PromptLearner(tiny, ["a.", "b."], ctx_groups=[[("normal", 5)], [("normal", 4)]])


def test_fp16_cast_quirk(tiny: Backbone) -> None:
    torch.manual_seed(7)
    learner = PromptLearner(tiny, ["object.", "damaged object."], deep_prompt_fp16_cast=True)
    values = learner.deep_prompt_values()
    assert all(v.dtype == torch.float32 for v in values)
    torch.testing.assert_close(values[0], learner.deep_prompts[0].half().float(), atol=0, rtol=0)
    assert not torch.equal(values[0], learner.deep_prompts[0])
    ids = tiny.tokenize(learner.prompt_texts())
    embeddings = tiny.token_embedding(ids).clone()
    embeddings[:, 1:13] = learner.ctx.detach()
    with torch.no_grad():
        close(learner(), tiny.encode_text(ids, embeddings, [v.detach() for v in values]))


def test_anomalyclip_state_mapping(tiny: Backbone) -> None:
    learner = PromptLearner(tiny, ["object.", "damaged object."])
    upstream = {"ctx_pos": torch.randn(1, 1, 12, 32), "ctx_neg": torch.randn(1, 1, 12, 32),
                "token_prefix_pos": torch.zeros(1, 1, 32),
                "compound_prompt_projections.0.weight": torch.zeros(36, 32)}
    upstream.update({f"compound_prompts_text.{i}": torch.randn(4, 32) for i in range(8)})
    learner.load_anomalyclip_state_dict({"prompt_learner": upstream})
    torch.testing.assert_close(learner.ctx[0], upstream["ctx_pos"][0, 0])
    torch.testing.assert_close(learner.ctx[1], upstream["ctx_neg"][0, 0])
    torch.testing.assert_close(learner.deep_prompts[7], upstream["compound_prompts_text.7"])
    del upstream["compound_prompts_text.7"]
    with pytest.raises(ValueError, match="7 deep prompts for 8"):
        learner.load_anomalyclip_state_dict(upstream)


def test_bad_input(tiny: Backbone) -> None:
    learner = PromptLearner(tiny, ["a {} photo."], n_ctx=2)
    with pytest.raises(ValueError, match=r"template 'a \{\} photo.' needs a class name"):
        learner()
    with pytest.raises(ValueError, match=r"ctx_bias must have shape \[32\] or \[B, 32\]"):
        learner(["cat"], ctx_bias=torch.zeros(2, 3, 32))
    with pytest.raises(ValueError, match="prompts"):
        learner(["cat"], prompts=[1])
    with pytest.raises(ValueError, match="deep_prompt_depth 13 exceeds the 12 text layers"):
        PromptLearner(tiny, ["object."], deep_prompt_depth=13)
    with pytest.raises(ValueError, match="non-empty list"):
        PromptLearner(tiny, "object.")
    with pytest.raises(ValueError, match="context length 77"):
        PromptLearner(tiny, ["word " * 80], n_ctx=2)()


def test_fp16_cast_gradient_follows_upstream_order(tiny: Backbone) -> None:
    """With the fp16 quirk, deep prompts are cast after their per-prompt expansion, as upstream
    (``textual_context.expand(P, -1, -1).permute(1, 0, 2).half()``): each prompt's gradient is
    rounded to fp16 before the expansion sums them. Casting first would round the sum."""
    torch.manual_seed(8)
    names = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal nut"]
    learner = PromptLearner(tiny, ["a {} object.", "a damaged {} object."], n_ctx=6,
                            deep_prompt_fp16_cast=True)
    weights = torch.randn(len(names), 2, 32, generator=torch.Generator().manual_seed(9))
    (learner(names) * weights).sum().backward()
    actual = [p.grad.clone() for p in learner.deep_prompts]

    texts = [text for name in names for text in learner.prompt_texts(name)]  # [C * P], C-major
    ids = tiny.tokenize(texts)
    n_flat = ids.shape[0]
    embeddings = tiny.token_embedding(ids).clone()
    embeddings[:, 1:7] = learner.ctx.detach().repeat(len(names), 1, 1)

    def reference(cast_after_expand: bool) -> list[torch.Tensor]:
        leaves = [p.detach().clone().requires_grad_(True) for p in learner.deep_prompts]
        if cast_after_expand:  # upstream: expand to every prompt, permute to LND, then .half()
            deep = [leaf.expand(n_flat, -1, -1).permute(1, 0, 2).half().permute(1, 0, 2)
                    for leaf in leaves]
        else:  # cast once, then the backbone expands the rounded tensor
            deep = [leaf.half().float() for leaf in leaves]
        out = tiny.encode_text(ids, embeddings, deep).reshape(len(names), 2, -1)
        (out * weights).sum().backward()
        return [leaf.grad for leaf in leaves]

    upstream, cast_first = reference(True), reference(False)
    with torch.no_grad():
        torch.testing.assert_close(learner(names).reshape(n_flat, -1),
                                   tiny.encode_text(ids, embeddings,
                                                    learner.deep_prompt_values()),
                                   rtol=0, atol=0)  # forward values: the same either way
    order_effect = max((u - c).abs().max().item()
                       for u, c in zip(upstream, cast_first, strict=True))
    scale = max(u.abs().max().item() for u in upstream)
    assert order_effect > 1e-4 * scale  # the case tells the two orders apart
    for got, expected in zip(actual, upstream, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-3 * order_effect)


def test_encode_text_takes_per_prompt_deep_prompts(tiny: Backbone) -> None:
    torch.manual_seed(10)
    ids = tiny.tokenize(["object.", "damaged object.", "a photo."])
    deep = [torch.randn(4, 32) * 0.1 for _ in range(3)]
    shared = tiny.encode_text(ids, deep_prompts=deep)
    expanded = tiny.encode_text(ids, deep_prompts=[d.expand(3, -1, -1) for d in deep])
    torch.testing.assert_close(expanded, shared, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"deep prompt 0 must have shape"):
        tiny.encode_text(ids, deep_prompts=[torch.zeros(2, 4, 32)])
