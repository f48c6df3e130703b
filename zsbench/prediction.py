"""One-image prediction: score images with a method and write each anomaly map as a PNG overlay.

``predict(["part.png"], "winclip")`` builds the method (or loads a trained one from a zsbench
checkpoint), preprocesses each image as the evaluator does (:mod:`zsbench.preprocess`), runs
``method.predict`` and returns the image score and the anomaly map resized to the image. With
``out_dir`` it writes ``<stem>_overlay.png``: the image beside the map blended over it
(:mod:`zsbench.overlays`), the map normalised to its own min..max.

A trainable method needs a checkpoint (``zsbench train`` or ``zsbench import-checkpoint``): its
untrained prompts would score noise. A transductive method (``MethodInfo.transductive``, e.g.
AnoVL) adapts on the test images themselves: it needs a set of images, scored together in one
batch, and refuses a single one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zsbench.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

OVERLAY_SUFFIX = "_overlay.png"


class PredictError(ConfigError):
    """A prediction that cannot run as asked (a method that needs a checkpoint or a set of
    images, a checkpoint of another method)."""


@dataclass
class ImagePrediction:
    """The outcome for one image: its score, its map (float32 [H, W] at the image's size) and
    the overlay written (None without ``out_dir``)."""

    image: str
    score: float
    anomaly_map: np.ndarray
    overlay: Path | None = None


def _load_images(images: Sequence[str | Path | Image.Image]) -> list[tuple[str, Image.Image]]:
    """(name, RGB image) for each path or PIL image; a folder stands for its images."""
    from zsbench.data import image_error_reason
    from zsbench.raw_files import list_images

    out: list[tuple[str, Image.Image]] = []
    for item in images:
        if isinstance(item, Image.Image):
            out.append((f"image_{len(out)}", item.convert("RGB")))
            continue
        path = Path(item)
        files = list_images(path) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise DataError(f"{path}: the folder holds no images (.png .jpg .jpeg .bmp .tif)")
        for file in files:
            if not file.is_file():
                raise DataError(f"{file}: no such image file")
            try:
                with Image.open(file) as img:
                    out.append((str(file), img.convert("RGB")))
            except (OSError, SyntaxError, ValueError) as err:
                raise DataError(f"{file}: cannot read the image: {image_error_reason(err)}"
                                ) from err
    if not out:
        raise DataError("no images given")
    return out


def _method(method: str, checkpoint: str | Path | None, overrides: Mapping[str, Any] | None,
            device: str) -> Any:
    from zsbench.method import build_method
    from zsbench.registry import METHODS

    cls = METHODS.get(method)
    if checkpoint is not None:
        from zsbench.checkpoints import load_method_from_checkpoint, read_checkpoint_metadata

        if not Path(checkpoint).is_file():
            raise PredictError(f"checkpoint not found: {checkpoint}")
        recorded = read_checkpoint_metadata(checkpoint).get("method")
        if recorded != cls.info.name:
            raise PredictError(f"checkpoint {checkpoint} is of method {recorded!r}, not "
                               f"{cls.info.name!r}")
        if overrides:
            logger.warning("predict: --set/--backbone options are ignored with a checkpoint (it "
                           "records its own config)")
        return load_method_from_checkpoint(checkpoint, device=device)
    if cls.info.trainable:
        raise PredictError(f"method {cls.info.name!r} is trainable: pass a checkpoint "
                           "(--checkpoint; from 'zsbench train' or 'zsbench import-checkpoint')")
    return build_method(cls.info.name, dict(overrides or {}), device=device)


def _resize_map(anomaly_map: torch.Tensor, width: int, height: int) -> np.ndarray:
    resized = torch.nn.functional.interpolate(anomaly_map[None, None].float(),
                                              size=(height, width), mode="bilinear",
                                              align_corners=False)
    return resized[0, 0].cpu().numpy().astype(np.float32)


def overlay_image(image: Image.Image, anomaly_map: np.ndarray) -> np.ndarray:
    """The image beside the map blended over it (uint8 [H, 2W + 4, 3]), the map normalised to
    its own min..max; the evaluator's overlay without the ground-truth panel."""
    from zsbench.overlays import overlay_panel

    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    width = pixels.shape[1]
    panel = overlay_panel(pixels, np.zeros(pixels.shape[:2], dtype=bool), anomaly_map,
                          float(anomaly_map.min()), float(anomaly_map.max()))
    return np.concatenate([panel[:, :width + 4], panel[:, 2 * width + 8:]], axis=1)


def predict(images: Sequence[str | Path | Image.Image] | str | Path, method: str, *,
            checkpoint: str | Path | None = None, out_dir: str | Path | None = None,
            class_name: str = "object", overrides: Mapping[str, Any] | None = None,
            device: str | None = None, batch_size: int = 8) -> list[ImagePrediction]:
    """Score ``images`` (paths, folders or PIL images) with ``method`` and, with ``out_dir``,
    write one overlay PNG per image. ``class_name`` is the prompt word (class-aware methods);
    ``overrides`` sets method config fields (ignored with a ``checkpoint``, which records its
    own config)."""
    from zsbench import atomic
    from zsbench.evaluate import _inference_context
    from zsbench.preprocess import image_to_tensor
    from zsbench.runner import default_device

    if isinstance(images, (str, Path)):
        images = [images]
    loaded = _load_images(images)
    model = _method(method, checkpoint, overrides, device or default_device())
    if model.info.transductive:
        if len(loaded) < 2:
            raise PredictError(f"method {model.info.name!r} is transductive: it adapts on the "
                               "test images themselves and needs a set of images (give several "
                               "images or a folder); they are scored together")
        batch_size = len(loaded)  # one batch: the set the method adapts on
    backbone, config = model.backbone, model.config
    device_of = next(iter(backbone.parameters())).device
    results: list[ImagePrediction] = []
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start:start + batch_size]
        batch = torch.stack([image_to_tensor(img, config.image_size, backbone.mean, backbone.std,
                                             config.input_interpolation) for _, img in chunk])
        with _inference_context(model):
            scores, maps = model.predict(batch.to(device_of), [class_name] * len(chunk))
        for (name, img), score, amap in zip(chunk, scores, maps, strict=True):
            results.append(ImagePrediction(name, float(score),
                                           _resize_map(amap.detach(), img.width, img.height)))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for result, (name, img) in zip(results, loaded, strict=True):
            stem = Path(name).stem
            while stem in used:  # same file name in two folders
                stem += "_"
            used.add(stem)
            path = out / f"{stem}{OVERLAY_SUFFIX}"
            with atomic.atomic_path(path) as tmp:
                Image.fromarray(overlay_image(img, result.anomaly_map)).save(tmp, format="PNG")
            result.overlay = path
    return results
