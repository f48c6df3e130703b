"""Training-free methods (CLIP, CLIP-AC, WinCLIP, AnoVL) and the shared prompt ensembles, on the
tiny random-weight backbone."""

from __future__ import annotations

import pytest
import torch

from tests.method_fixtures import SIZE, TINY
from zsbench.backbone import Backbone
from zsbench.method import AnomalyMethod, build_method
from zsbench.methods import anovl, clip, clip_ac, winclip
from zsbench.prompt_ensembles import (
    ANOVL_ENSEMBLES,
    APRIL_GAN_TEMPLATES,
    CLIP_IMAGENET_TEMPLATES,
    WINCLIP_ANOMALIB,
    WINCLIP_ANOMALIB_TEMPLATES,
    WINCLIP_APRIL_GAN,
    ClassTextCache,
    PromptEnsemble,
    anovl_domain,
    compose_prompts,
    encode_ensemble,
    encode_prompts,
)

NAMES = ["object", "object"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def methods(backbone: Backbone) -> dict[str, AnomalyMethod]:
    """One instance per method variant; text caches are shared where the prompts are equal."""
    built = {
        "clip": build_method("clip", TINY, backbone=backbone),
        "clip_ac": build_method("clip_ac", TINY, backbone=backbone),
        "winclip": build_method("winclip", TINY, backbone=backbone),
        "winclip_april_gan": build_method("winclip", {**TINY, "prompt_lineage": "april_gan"},
                                          backbone=backbone),
        "anovl": build_method("anovl", TINY, backbone=backbone),
    }
    for key, overrides in {"winclip_map_max": {"image_score_adds_map_max": True}}.items():
        built[key] = build_method("winclip", {**TINY, **overrides}, backbone=backbone)
        built[key].text_cache = built["winclip"].text_cache
    for key, overrides in {"anovl_no_tta": {"tta_steps": 0},
                           "anovl_plain": {"tta_steps": 0, "vv_from": None}}.items():
        built[key] = build_method("anovl", {**TINY, **overrides}, backbone=backbone)
        built[key].text_cache = built["anovl"].text_cache
    return built


# -- prompt ensembles ------------------------------------------------------------------------------

def test_ensemble_sizes_and_strings() -> None:
    assert (len(WINCLIP_ANOMALIB.normal_states), len(WINCLIP_ANOMALIB.anomalous_states),
            len(WINCLIP_ANOMALIB.templates)) == (7, 4, 21)
    assert (len(WINCLIP_APRIL_GAN.normal_states), len(WINCLIP_APRIL_GAN.anomalous_states),
            len(WINCLIP_APRIL_GAN.templates)) == (7, 5, 35)
    assert "broken {}" in WINCLIP_APRIL_GAN.anomalous_states
    assert "broken {}" not in WINCLIP_ANOMALIB.anomalous_states
    assert len(CLIP_IMAGENET_TEMPLATES) == 80
    assert CLIP_IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    texture, objects = ANOVL_ENSEMBLES["texture"].templates, ANOVL_ENSEMBLES["object"].templates
    assert len(texture) == len(objects) == 66
    assert "an industrial photo of a {}" in texture and "an industrial photo of a {}" in objects
    assert "a surface picture of the {} for anomaly detection" in texture
    assert "a manufacturing image of a {}" in objects and "a textural photo of a {}" not in objects
    normal, anomalous = WINCLIP_ANOMALIB.prompts("bottle")
    assert (len(normal), len(anomalous)) == (7 * 21, 4 * 21)
    assert normal[0] == "a cropped photo of the bottle." and anomalous[-1] == \
        "a photo of a bottle with damage for anomaly detection."
    assert compose_prompts(["{} ok", "bad {}"], ["a {}.", "the {}!"], "x") == \
        ["a x ok.", "the x ok!", "a bad x.", "the bad x!"]


def test_ensemble_rejects_templates_without_placeholder() -> None:
    with pytest.raises(ValueError, match="templates"):
        PromptEnsemble(("{}",), ("bad {}",), ("a photo",))
    with pytest.raises(ValueError, match="normal_states is empty"):
        PromptEnsemble((), ("bad {}",), ("a {}",))


def test_anovl_domain_from_class_name() -> None:
    assert anovl_domain("wood") == "texture"
    assert anovl_domain(" Carpet ") == "texture"
    assert anovl_domain("metal_nut") == "object"
    assert anovl_domain("fabric") == "object"
    assert anovl_domain("fabric", texture_classes=("Fabric",)) == "texture"


def test_encode_prompts_matches_full_context(backbone: Backbone) -> None:
    prompts = ["a photo of a flawless bottle.", "a bottle.", "there is the damaged screw here."]
    with torch.no_grad():
        truncated = encode_prompts(backbone, prompts, batch_size=2)
        full = backbone.encode_text_features(prompts)
    torch.testing.assert_close(truncated, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        encode_prompts(backbone, prompts, batch_size=0)


def test_encode_ensemble_averaging(backbone: Backbone) -> None:
    ensemble = PromptEnsemble(("{}", "good {}"), ("bad {}",), ("a {}.", "the {} here."))
    with torch.no_grad():
        normalized = encode_ensemble(backbone, ensemble, "cup", averaging="normalized")
        raw = encode_ensemble(backbone, ensemble, "cup", averaging="raw")
        each = backbone.encode_text_features(ensemble.prompts("cup")[0])
    assert normalized.shape == (2, backbone.embed_dim)
    torch.testing.assert_close(normalized.norm(dim=-1), torch.ones(2))
    unit = each / each.norm(dim=-1, keepdim=True)
    expected = unit.mean(0) / unit.mean(0).norm()
    torch.testing.assert_close(normalized[0], expected, atol=1e-5, rtol=1e-5)
    expected_raw = each.mean(0) / each.mean(0).norm()
    torch.testing.assert_close(raw[0], expected_raw, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="averaging 'mean'"):
        encode_ensemble(backbone, ensemble, "cup", averaging="mean")


def test_class_text_cache() -> None:
    calls: list[str] = []

    def encode(name: str) -> torch.Tensor:
        calls.append(name)
        return torch.full((2, 3), float(len(name)))

    cache = ClassTextCache(encode)
    with torch.inference_mode():
        text = cache(["ab", "abc", "ab"])
    assert text.shape == (3, 2, 3) and text[1, 0, 0].item() == 3.0
    assert calls == ["ab", "abc"] and len(cache) == 2
    assert not cache.get("ab").is_inference()  # usable by training steps later
    with pytest.raises(ValueError, match="class name"):
        cache([""])
    with pytest.raises(TypeError, match="sequence"):
        cache("ab")


# -- predictions of every method ---------------------------------------------------------------

@pytest.mark.parametrize("key", ["clip", "clip_ac", "winclip", "winclip_april_gan", "anovl"])
def test_predict_shapes_and_ranges(methods: dict, images: torch.Tensor, key: str) -> None:
    method = methods[key]
    context = torch.no_grad if method.needs_grad_at_test else torch.inference_mode
    with context():
        scores, maps = method.predict(images, NAMES)
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert float(maps.std()) > 0.0  # the map varies over the image
    with pytest.raises(ValueError, match="class names"):
        method.predict(images, NAMES[:1])


def test_clip_scores_match_manual_computation(methods: dict, backbone: Backbone,
                                              images: torch.Tensor) -> None:
    with torch.inference_mode():
        scores, _ = methods["clip"].predict(images, NAMES)
        text = backbone.encode_text_features([clip.NORMAL_PROMPT.format("object"),
                                              clip.ANOMALOUS_PROMPT.format("object")])
        image = backbone.encode_image(images).global_embedding
    cos = (image / image.norm(dim=-1, keepdim=True)) @ (text / text.norm(dim=-1, keepdim=True)).T
    torch.testing.assert_close(scores, (100.0 * cos).softmax(-1)[:, 1], atol=1e-5, rtol=1e-4)


def test_describe_prompts_return_module_constants() -> None:
    described = clip.ClipBaseline.describe_prompts(clip.ClipConfig())
    assert described["normal"] == clip.NORMAL_PROMPT == "a photo of a normal {}."
    assert described["anomalous"] == clip.ANOMALOUS_PROMPT == "a photo of an anomalous {}."
    described = clip_ac.ClipAc.describe_prompts(clip_ac.ClipAcConfig())
    assert described["templates"] == list(CLIP_IMAGENET_TEMPLATES)
    assert described["normal_states"] == ["normal {}"]
    assert described["anomalous_states"] == ["anomalous {}"]
    anomalib = winclip.WinClip.describe_prompts(winclip.WinClipConfig())
    assert anomalib["templates"] == list(WINCLIP_ANOMALIB_TEMPLATES)
    assert anomalib["lineage"] == "anomalib" and anomalib["averaging"] == "raw"
    april = winclip.WinClip.describe_prompts(winclip.WinClipConfig(prompt_lineage="april_gan"))
    assert april["templates"] == list(APRIL_GAN_TEMPLATES)
    assert april["anomalous_states"] == list(WINCLIP_APRIL_GAN.anomalous_states)
    with pytest.raises(ValueError, match="prompt_lineage 'paper'"):
        winclip.WinClip.describe_prompts(winclip.WinClipConfig(prompt_lineage="paper"))
    described = anovl.AnoVL.describe_prompts(anovl.AnoVLConfig())
    assert described["texture"] == ANOVL_ENSEMBLES["texture"].describe()
    assert described["object"]["templates"] == list(ANOVL_ENSEMBLES["object"].templates)


def test_bad_options_name_the_option(backbone: Backbone, methods: dict) -> None:
    with pytest.raises(ValueError, match="map_layer=25"):
        build_method("clip", {**TINY, "map_layer": 25}, backbone=backbone)
    with pytest.raises(ValueError, match="prompt_lineage 'paper'"):
        build_method("winclip", {**TINY, "prompt_lineage": "paper"}, backbone=backbone)
    with pytest.raises(ValueError, match="image_size=56"):
        methods["winclip"].predict(torch.zeros(1, 3, 112, 112), ["object"])
    with pytest.raises(ValueError, match="window_sizes contains 5"):
        build_method("winclip", {**TINY, "window_sizes": "2,5"}, backbone=backbone)
    with pytest.raises(ValueError, match="augmentations"):
        build_method("anovl", {**TINY, "augmentations": "hflip,shear"}, backbone=backbone)
    with pytest.raises(ValueError, match="tta_steps"):
        build_method("anovl", {**TINY, "tta_steps": -1}, backbone=backbone)


# -- WinCLIP -------------------------------------------------------------------------------------

def test_window_enumeration_on_4x4_grid() -> None:
    two, three = winclip.window_indices((4, 4), 2), winclip.window_indices((4, 4), 3)
    assert two.shape == (9, 4) and three.shape == (4, 9)
    assert two[0].tolist() == [0, 1, 4, 5] and two[-1].tolist() == [10, 11, 14, 15]
    assert three[3].tolist() == [5, 6, 7, 9, 10, 11, 13, 14, 15]
    assert winclip.window_indices((4, 4), 1).shape == (16, 1)
    with pytest.raises(ValueError, match="does not fit"):
        winclip.window_indices((4, 4), 5)


def test_harmonic_aggregation_matches_loop() -> None:
    grid, size = (3, 4), 2
    windows = winclip.window_indices(grid, size)
    scores = torch.rand(2, windows.shape[0], generator=torch.Generator().manual_seed(0)) + 0.05
    result = winclip.harmonic_window_aggregation(scores, windows, 12)
    expected = torch.zeros(2, 12)
    for patch in range(12):
        covering = [w for w in range(windows.shape[0]) if patch in windows[w].tolist()]
        for b in range(2):
            expected[b, patch] = len(covering) / sum(1.0 / scores[b, w] for w in covering)
    torch.testing.assert_close(result, expected)
    corner_window = scores[:, 0]  # patch 0 is covered by window 0 only
    torch.testing.assert_close(result[:, 0], corner_window)


def test_winclip_lineage_aggregations(methods: dict) -> None:
    probs = {}
    generator = torch.Generator().manual_seed(1)
    for size, windows in methods["winclip"].windows.items():
        p_abn = torch.rand(1, windows.shape[0], generator=generator) * 0.8 + 0.1
        probs[size] = torch.stack([1 - p_abn, p_abn], dim=-1)
    image = torch.tensor([[0.3, 0.7]])
    anomalib = methods["winclip"].patch_scores(image, probs)
    per_scale = [winclip.harmonic_window_aggregation(probs[s][..., 1], w, 16)
                 for s, w in methods["winclip"].windows.items()]
    expected = 3.0 / (1 / 0.7 + 1 / per_scale[0] + 1 / per_scale[1])
    torch.testing.assert_close(anomalib, expected)
    april = methods["winclip_april_gan"].patch_scores(image, probs)
    normality = [winclip.harmonic_window_aggregation(probs[s][..., 0], w, 16)
                 for s, w in methods["winclip"].windows.items()]
    torch.testing.assert_close(april, 1.0 - 2.0 / (1 / normality[0] + 1 / normality[1]))


def test_winclip_lineages_differ_and_map_max_fusion(methods: dict, images: torch.Tensor) -> None:
    with torch.inference_mode():
        base_scores, anomalib_maps = methods["winclip"].predict(images, NAMES)
        _, april_maps = methods["winclip_april_gan"].predict(images, NAMES)
        fused_scores, fused_maps = methods["winclip_map_max"].predict(images, NAMES)
    assert (anomalib_maps - april_maps).abs().max() > 1e-3
    torch.testing.assert_close(fused_maps, anomalib_maps)
    added = fused_scores - base_scores
    assert (added > 0).all() and (added <= 1).all()
    # the patch-level maximum survives bilinear upsampling as an upper bound of the map
    assert (added + 1e-6 >= anomalib_maps.flatten(1).amax(dim=1)).all()


# -- AnoVL ---------------------------------------------------------------------------------------

def test_anovl_vv_path_and_adaptation_change_the_map(methods: dict, images: torch.Tensor) -> None:
    with torch.no_grad():
        adapted = methods["anovl"].predict(images, NAMES)
        vv_only = methods["anovl_no_tta"].predict(images, NAMES)
        plain = methods["anovl_plain"].predict(images, NAMES)
    assert (vv_only.anomaly_maps - plain.anomaly_maps).abs().max() > 1e-4
    assert (adapted.anomaly_maps - vv_only.anomaly_maps).abs().max() > 1e-4
    # the image score comes from the global (original-path) embedding: no V-V, no adapter
    torch.testing.assert_close(adapted.image_scores, plain.image_scores)


def test_anovl_is_deterministic_and_per_image(methods: dict, images: torch.Tensor) -> None:
    method = methods["anovl"]
    with torch.no_grad():
        first = method.predict(images, NAMES)
        second = method.predict(images, NAMES)
        alone = method.predict(images[1:], NAMES[1:])
    with torch.inference_mode():
        inference = method.predict(images, NAMES)
    assert torch.equal(first.anomaly_maps, second.anomaly_maps)
    torch.testing.assert_close(alone.anomaly_maps[0], first.anomaly_maps[1], atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(inference.anomaly_maps, first.anomaly_maps)
    assert method.info.transductive and not method.info.trainable


def test_anovl_tta_objective_values() -> None:
    clean = torch.tensor([[0.5, 0.5]])
    noisy = torch.tensor([[0.5, 0.5]])
    value = anovl.tta_objective(clean, noisy, 0.5)
    expected = torch.log(torch.tensor(2.0)) + 0.5 * 2 * torch.log(torch.tensor(2.0))
    torch.testing.assert_close(value, expected)
    confident = anovl.tta_objective(torch.tensor([[0.99, 0.01]]), torch.tensor([[0.01, 0.99]]),
                                    0.5)
    assert float(confident) < float(value)
