"""AnoVL's upstream preset (``hq-deng/AnoVL`` ``vl_test.py``) and the per-method preprocessing and
upsampling settings it needs, on the tiny random-weight backbone.

The reference computations here are written from the upstream code's behaviour (``utils.py: aug``,
``model.py: TextAdapter``, ``vl_test.py``'s TTA loop), independently of ``methods/anovl.py``."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from PIL import Image

from tests.method_fixtures import SIZE, TINY
from zsbench.anomaly_maps import upsample
from zsbench.backbone import Backbone
from zsbench.method import (
    AnomalyMethod,
    MethodConfig,
    MethodInfo,
    Prediction,
    build_method,
    describe_method,
    make_config,
)
from zsbench.methods import anovl
from zsbench.preprocess import AnomalyImageDataset, image_to_tensor
from zsbench.prompt_ensembles import ANOVL_ENSEMBLES, encode_prompts
from zsbench.synthetic import synthetic_records

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def texts(backbone: Backbone) -> AnomalyMethod:
    """A method whose text caches every other instance borrows (encoding prompts is the slow
    part on CPU)."""
    return build_method("anovl", TINY, backbone=backbone)


def upstream(backbone: Backbone, texts: AnomalyMethod, **overrides) -> anovl.AnoVL:
    """A fresh method with the upstream preset (then ``overrides``), sharing the text caches."""
    config = make_config("anovl", {**TINY, **overrides}, preset="upstream")
    method = build_method("anovl", config, backbone=backbone)
    method.text_cache, method.prompt_bank = texts.text_cache, texts.prompt_bank
    return method


def random_image(seed: int, size: tuple[int, int] = (97, 61), mode: str = "RGB") -> Image.Image:
    channels = 3 if mode == "RGB" else 1
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels),
                                                  dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


# -- input resize ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, size", [("RGB", (97, 61)), ("L", (97, 61)), ("RGB", (23, 31))])
def test_bilinear_input_equals_torchvision_resize_on_pil(mode: str, size: tuple) -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    image = random_image(1, size, mode)
    # vl_test.py get_data_transforms: Resize((S, S)) on the PIL image, then RGB, ToTensor, Normalize
    reference = transforms.Compose([
        transforms.Resize((40, 40)), transforms.CenterCrop(40),
        transforms.Lambda(lambda im: im.convert("RGB")), transforms.ToTensor(),
        transforms.Normalize(MEAN, STD)])(image)
    bilinear = image_to_tensor(image, 40, MEAN, STD, interpolation="bilinear")
    torch.testing.assert_close(bilinear, reference, rtol=0, atol=1e-6)
    bicubic = image_to_tensor(image, 40, MEAN, STD)
    assert (bicubic - bilinear).abs().max() > 0.05


def test_bilinear_input_is_antialiased_like_pil() -> None:
    image = random_image(2, (160, 160))
    ours = image_to_tensor(image, 40, MEAN, STD, interpolation="bilinear")
    pil = np.asarray(image.resize((40, 40), Image.BILINEAR), dtype=np.float32) / 255.0
    expected = (torch.from_numpy(pil).permute(2, 0, 1) - torch.tensor(MEAN).view(3, 1, 1)) \
        / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    raw = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    plain = F.interpolate(raw[None], size=(40, 40), mode="bilinear", align_corners=False)[0]
    plain = (plain - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert (plain - ours).abs().max() > 0.1  # a 4x downscale without antialias is another image


def test_dataset_honours_the_interpolation_and_rejects_unknown_names() -> None:
    records = [{"image": random_image(3), "mask": None, "label": 0, "prompt_name": "object"}]
    item = AnomalyImageDataset(records, 40, MEAN, STD, interpolation="bilinear")[0]
    torch.testing.assert_close(item["image"], image_to_tensor(records[0]["image"], 40, MEAN, STD,
                                                              interpolation="bilinear"))
    assert not torch.equal(item["image"], AnomalyImageDataset(records, 40, MEAN, STD)[0]["image"])
    with pytest.raises(ValueError, match="input_interpolation 'lanczos3'"):
        AnomalyImageDataset(records, 40, MEAN, STD, interpolation="lanczos3")
    assert MethodConfig().input_interpolation == "bicubic"


class Recorder(AnomalyMethod):
    """Keeps the images the evaluator feeds it."""

    info = MethodInfo(name="test_recorder", title="Recorder (test)", paper="test", trainable=False)

    def _predict(self, images, class_names):
        self.seen.append(images.clone())
        return Prediction(images.mean(dim=(1, 2, 3)), images[:, 0])


def test_evaluator_and_trainer_resize_with_the_method_setting(backbone: Backbone) -> None:
    from zsbench.evaluate import EvalSettings, evaluate_dataset
    from zsbench.train import _training_dataset

    records = Dataset.from_list(synthetic_records("synthetic_b", size=64, n_train=0, n_normal=1,
                                                  n_anomalous=1))
    expected = AnomalyImageDataset(records, SIZE, backbone.mean, backbone.std,
                                   interpolation="bilinear")
    bicubic = AnomalyImageDataset(records, SIZE, backbone.mean, backbone.std)
    assert not torch.equal(expected[0]["image"], bicubic[0]["image"])

    method = Recorder(MethodConfig(**TINY, input_interpolation="bilinear"), backbone)
    method.seen = []
    evaluate_dataset(method, records, EvalSettings(resolution=SIZE, batch_size=len(records)))
    seen = torch.cat(method.seen)
    assert len(seen) == len(records)
    for row in seen:  # the evaluator orders by category: find each image among the records
        assert min((row - expected[i]["image"]).abs().max() for i in range(len(records))) < 1e-6

    trainee = SimpleNamespace(config=method.config, backbone=backbone)
    train_items = _training_dataset(trainee, [records])
    torch.testing.assert_close(train_items[0]["image"], expected[0]["image"])


# -- map upsampling --------------------------------------------------------------------------------

def test_upsample_align_corners_equals_interpolate() -> None:
    grid = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = upsample(grid, 15, align_corners=True)
    torch.testing.assert_close(ours, F.interpolate(grid[:, None], size=(15, 15), mode="bilinear",
                                                   align_corners=True)[:, 0], rtol=0, atol=0)
    assert (ours - upsample(grid, 15)).abs().max() > 1e-3
    torch.testing.assert_close(ours[:, 0, 0], grid[:, 0, 0])  # corner patch on the corner pixel


def test_anovl_map_align_corners(backbone: Backbone, texts, images: torch.Tensor) -> None:
    method = build_method("anovl", {**TINY, "map_align_corners": True}, backbone=backbone)
    method.text_cache = texts.text_cache
    with torch.no_grad():
        _, grid = method.patch_scores(images, ["object"] * 2)
        maps = method.predict(images, ["object"] * 2).anomaly_maps
    expected = F.interpolate(grid[:, None], size=(SIZE, SIZE), mode="bilinear",
                             align_corners=True)[:, 0]
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-7)
    assert (maps - upsample(grid, SIZE)).abs().max() > 1e-5


# -- views -----------------------------------------------------------------------------------------

def reference_views(x: torch.Tensor) -> torch.Tensor:
    """``utils.py: aug`` of a normalised [1, 3, S, S] batch: the image, 8 small rotations, 8
    translations (affine grids, align_corners, reflection), hflip, grey (kornia's weights), 3
    quarter turns; 22 images (upstream shuffles them; the mean does not care)."""
    def warp(theta):
        grid = F.affine_grid(torch.tensor([theta], dtype=torch.float32), list(x.shape),
                             align_corners=True)
        return F.grid_sample(x, grid, padding_mode="reflection", align_corners=True)

    views = [x]
    for angle in (-math.pi / 4, -3 * math.pi / 16, -math.pi / 8, -math.pi / 16, math.pi / 16,
                  math.pi / 8, 3 * math.pi / 16, math.pi / 4):
        views.append(warp([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle),
                                                                    math.cos(angle), 0]]))
    for a, b in ((0.2, 0.2), (-0.2, 0.2), (-0.2, -0.2), (0.2, -0.2), (0.1, 0.1), (-0.1, 0.1),
                 (-0.1, -0.1), (0.1, -0.1)):
        views.append(warp([[1, 0, a], [0, 1, b]]))
    views.append(x.flip(-1))
    grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    views.append(grey[:, None].repeat(1, 3, 1, 1))
    views += [torch.rot90(x, k, (-2, -1)) for k in (1, 2, 3)]
    return torch.cat(views)


def test_upstream_score_averages_the_image_and_its_21_views(backbone: Backbone, texts,
                                                               images: torch.Tensor) -> None:
    # CLIP's logit scale spreads the per-view probabilities so that a missing view shows
    method = upstream(backbone, texts, softmax_without_logit_scale=False)
    assert len(method.config.augmentations) == 21
    x = images[:1]
    with torch.no_grad():
        score = method.predict(x, ["object"]).image_scores[0]
        views = reference_views(x)
        assert views.shape[0] == 22
        glob = backbone.encode_image(views, layers=(backbone.vision_layers,),
                                     vv_from=1).global_embedding
        text = texts.text_cache.get("object")
        logits = 100.0 * F.normalize(glob, dim=-1) @ F.normalize(text, dim=-1).t()
        per_view = logits.softmax(dim=-1)[:, 1]
    torch.testing.assert_close(score, per_view.mean(), rtol=0, atol=2e-6)
    # the count matters: 21 augmentations alone, the image alone, the 6 default views differ
    assert abs(float(per_view[1:].mean() - per_view.mean())) > 1e-4
    assert abs(float(per_view[0] - per_view.mean())) > 1e-4
    six = per_view[[0, 17, 19, 20, 21]].mean()
    assert abs(float(six - per_view.mean())) > 1e-4


def test_upstream_map_comes_from_the_image_alone(backbone: Backbone, texts,
                                                 images: torch.Tensor) -> None:
    with torch.no_grad():
        with_views = upstream(backbone, texts).predict(images, ["object"] * 2)
        image_only = upstream(backbone, texts, augmentations=()).predict(images, ["object"] * 2)
        averaged = upstream(backbone, texts, augmentations=("hflip", "vflip", "rot90", "rot180",
                                                            "rot270"),
                            map_from_image_only=False).predict(images, ["object"] * 2)
    torch.testing.assert_close(with_views.anomaly_maps, image_only.anomaly_maps, rtol=0,
                               atol=1e-5)
    assert (averaged.anomaly_maps - image_only.anomaly_maps).abs().max() > 1e-4


def test_views_without_a_grid_inverse_need_map_from_image_only(backbone: Backbone) -> None:
    with pytest.raises(ValueError, match="map_from_image_only"):
        build_method("anovl", {**TINY, "augmentations": "hflip,rot-22.5"}, backbone=backbone)
    with pytest.raises(ValueError, match="augmentations: 'rot22.5' unknown"):
        build_method("anovl", {**TINY, "augmentations": "rot22.5", "map_from_image_only": True},
                     backbone=backbone)
    with pytest.raises(ValueError, match="tta_adapter"):
        build_method("anovl", {**TINY, "tta_adapter": "mlp"}, backbone=backbone)


# -- test-time adaptation --------------------------------------------------------------------------

def test_text_adapter_reset_is_nn_linear_default_init() -> None:
    adapter = anovl.TextAdapter(torch.randn(12, 8))
    adapter.reset(torch.Generator().manual_seed(7))
    reference = torch.nn.Linear(8, 12)
    torch.manual_seed(7)
    reference.reset_parameters()
    assert torch.equal(adapter.linear.weight, reference.weight)
    assert torch.equal(adapter.linear.bias, reference.bias)


def test_noise_is_added_to_the_unnormalised_tokens(backbone: Backbone, texts,
                                                   images: torch.Tensor) -> None:
    """The adapter's inputs during TTA: clean tokens, then clean + N(0, 0.055)."""
    def adapter_inputs(method: anovl.AnoVL) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []

        def hook(module, args):
            if isinstance(module, (anovl.TextAdapter, anovl.LinearAdapter)):
                seen.append(args[0].detach().clone())

        handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                method.predict(images[:1], ["object"])
        finally:
            handle.remove()
        return seen

    raw = backbone.encode_image(images[:1], layers=(backbone.vision_layers,),
                                vv_from=1).patch_tokens[backbone.vision_layers]
    assert (raw.norm(dim=-1) - 1).abs().min() > 0.5  # tokens far from unit norm
    upstream_inputs = adapter_inputs(upstream(backbone, texts))
    unit_inputs = adapter_inputs(upstream(backbone, texts,
                                          tta_noise_on_unnormalized_tokens=False))
    for inputs, clean in ((upstream_inputs, raw), (unit_inputs, F.normalize(raw, dim=-1))):
        assert len(inputs) == 2 * 5 + 1  # (clean, noisy) per step, then the map
        torch.testing.assert_close(inputs[0][0], clean[0], rtol=0, atol=1e-5)
        noise = inputs[1] - inputs[0]
        assert 0.045 < float(noise.std()) < 0.065 and abs(float(noise.mean())) < 0.01
    # the same noise is relatively 5x smaller on the tokens than on their unit versions
    relative = [float((i[1] - i[0]).norm(dim=-1).mean() / i[0].norm(dim=-1).mean())
                for i in (upstream_inputs, unit_inputs)]
    assert relative[0] * 3 < relative[1]
    with torch.no_grad():
        a = upstream(backbone, texts).predict(images, ["object"] * 2).anomaly_maps
        b = upstream(backbone, texts, tta_noise_on_unnormalized_tokens=False).predict(
            images, ["object"] * 2).anomaly_maps
    assert (a - b).abs().max() > 1e-4


def optimizer_steps(method: anovl.AnoVL, class_name: str) -> list[float]:
    state = method.tta_state[class_name].optimizer.state
    return [float(s["step"]) for s in state.values()]


def test_optimizer_is_kept_per_class_across_images(backbone: Backbone, texts,
                                                   images: torch.Tensor) -> None:
    first, second = images[:1], images[1:]
    method = upstream(backbone, texts)
    with torch.no_grad():
        method.predict(first, ["object"])
        assert optimizer_steps(method, "object") == [5.0, 5.0]
        after_first = copy.deepcopy(method.tta_state["object"].optimizer.state_dict())
        continued = method.predict(second, ["object"]).anomaly_maps
        assert optimizer_steps(method, "object") == [10.0, 10.0]
        assert method.tta_state["object"].images == 2

        # the second image alone, on a fresh optimizer, gives another map
        alone = upstream(backbone, texts).predict(second, ["object"]).anomaly_maps
        assert (continued - alone).abs().max() > 1e-5

        # it starts from exactly the state the first image left
        restored = upstream(backbone, texts)
        restored.predict(second, ["object"])  # creates the class's optimizer ...
        restored.tta_state["object"].optimizer.load_state_dict(after_first)  # ... then rewinds it
        torch.testing.assert_close(restored.predict(second, ["object"]).anomaly_maps, continued)

        # the state is per class: another class's images leave it alone
        other = upstream(backbone, texts)
        other.predict(first, ["wood"])
        torch.testing.assert_close(other.predict(second, ["object"]).anomaly_maps, alone)
        assert optimizer_steps(other, "wood") == [5.0, 5.0]
        assert optimizer_steps(other, "object") == [5.0, 5.0]

        # a batch is adapted in order: the same as one image after the other
        batch = upstream(backbone, texts).predict(images, ["object", "object"]).anomaly_maps
        torch.testing.assert_close(batch[1], continued[0], rtol=1e-5, atol=1e-5)


def test_tta_state_is_reset_between_evaluations_and_categories(backbone: Backbone, texts,
                                                               images: torch.Tensor) -> None:
    method = upstream(backbone, texts)
    with torch.no_grad():
        alone = method.predict(images[1:], ["object"]).anomaly_maps
        method.predict(images[:1], ["object"])
        method.eval()  # what the evaluator does first
        assert method.tta_state == {}
        torch.testing.assert_close(method.predict(images[1:], ["object"]).anomaly_maps, alone)
        method.start_category("pcb2")
        assert method.tta_state == {}
        method.predict(images[:1], ["object"])
        method.reset_tta_state()
        torch.testing.assert_close(method.predict(images[1:], ["object"]).anomaly_maps, alone)

    from zsbench.evaluate import EvalSettings, evaluate_dataset

    records = Dataset.from_list(synthetic_records("synthetic_b", size=64, n_train=0, n_normal=1,
                                                  n_anomalous=1))
    settings = EvalSettings(resolution=SIZE, batch_size=2)
    evaluate_dataset(method, records, settings)
    seen_once = {name: state.images for name, state in method.tta_state.items()}
    evaluate_dataset(method, records, settings)
    assert {name: state.images for name, state in method.tta_state.items()} == seen_once


def test_default_tta_keeps_no_state(backbone: Backbone, texts, images: torch.Tensor) -> None:
    method = build_method("anovl", TINY, backbone=backbone)
    method.text_cache = texts.text_cache
    with torch.no_grad():
        method.predict(images, ["object"] * 2)
    assert method.tta_state == {}


def test_upstream_tta_matches_a_reference_loop(backbone: Backbone, texts,
                                               images: torch.Tensor) -> None:
    """vl_test.py's TTA with model.py's TextAdapter, on two images of one class: the adapter is
    re-drawn per image, the noise added to the projected tokens, one AdamW kept across both.
    Random numbers as the method draws them (a generator seeded per image)."""
    config = make_config("anovl", TINY, preset="upstream")
    name, dim, steps = "object", backbone.embed_dim, config.tta_steps
    ensemble = ANOVL_ENSEMBLES["object"]
    bank = torch.cat([F.normalize(encode_prompts(backbone, [t.format(s.format(name))
                                                            for t in ensemble.templates
                                                            for s in states]), dim=-1)
                      for states in (ensemble.normal_states, ensemble.anomalous_states)])
    text = texts.text_cache.get(name)
    linear = torch.nn.Linear(dim, bank.shape[0])
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-3)  # one per class

    def text_adapter(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + 0.5 * torch.tanh(linear(x / x.norm(dim=-1, keepdim=True))) @ bank

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        x = x / x.norm(dim=-1, keepdim=True)
        return (x @ text.t()).softmax(dim=-1)  # raw cosines

    expected = []
    for index in range(2):
        with torch.no_grad():
            layer = backbone.vision_layers
            tokens = backbone.encode_image(images[index:index + 1], layers=(layer,),
                                           vv_from=1).patch_tokens[layer]
        generator = torch.Generator().manual_seed(config.seed)
        bound = 1 / math.sqrt(dim)
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=generator)
            linear.bias.uniform_(-bound, bound, generator=generator)
        for _ in range(steps):
            noisy = tokens + torch.randn(tokens.shape, generator=generator) * 0.055
            pred = probabilities(text_adapter(torch.cat([tokens, noisy])))
            soft = -(pred[0] * pred[0].log()).sum(-1).mean()
            hard = (-pred[1:, ..., 1].log() - pred[0][..., 0].log()).mean()
            loss = soft + 0.5 * hard
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            expected.append(probabilities(text_adapter(tokens))[0, :, 1])
    method = upstream(backbone, texts, patch_mean_filter=False)
    with torch.no_grad():
        _, grid = method.patch_scores(images, [name, name])
    torch.testing.assert_close(grid.flatten(1), torch.stack(expected), rtol=1e-4, atol=1e-5)


# -- options shown ---------------------------------------------------------------------------------

def test_methods_info_lists_the_options_and_the_preset() -> None:
    described = describe_method("anovl")
    options = {o["name"]: o for o in described["options"]}
    for name in ("input_interpolation", "map_align_corners", "map_from_image_only", "tta_adapter",
                 "tta_noise_on_unnormalized_tokens", "tta_optimizer_per_class", "augmentations"):
        assert "vl_test.py" in options[name]["help"] or "torchvision" in options[name]["help"] \
            or "utils.py" in options[name]["help"], name
    preset = described["presets"]["upstream"]
    assert preset["input_interpolation"] == "bilinear" and preset["map_align_corners"] is True
    assert tuple(preset["augmentations"]) == anovl.UPSTREAM_AUGMENTATIONS
    assert preset["tta_adapter"] == "text_adapter" and preset["tta_optimizer_per_class"] is True
    assert options["tta_optimizer_per_class"]["default"] is False  # defaults unchanged
