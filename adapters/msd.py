"""Medical Segmentation Decathlon, Task06 Lung: 3-D CT volumes cut into 2-D slices (our protocol).

Layout: ``imagesTr/lung_NNN.nii.gz`` + ``labelsTr/lung_NNN.nii.gz`` (same file names; the
labelled training volumes) and ``dataset.json``, usually inside ``Task06_Lung/``. ``imagesTs``
has no labels and is not read. macOS ``._*`` files of the archive are skipped.

zsbench 2-D protocol (no sound public one exists), applied to every labelled volume:

1. Volumes are reoriented to RAS and cut into axial slices, shown in the radiological convention
   (anterior at the top, the patient's right on the image's left).
2. Intensities are Hounsfield units, windowed to the lung window [-1000, 400] HU and mapped
   linearly to 0..255 (uint8 greyscale PNG).
3. Every slice with at least one tumour voxel is anomalous; its mask is that slice's tumour
   voxels (0/255 PNG).
4. Normal slices are tumour-free slices with index z divisible by ``normal_stride`` (default 10)
   and at least ``normal_margin`` (default 5) slices away from any tumour slice; they have no
   mask. The sample is deterministic: it depends only on the label volume.

Records carry PNG bytes; ``source_path`` is ``imagesTr/<file>#z=<zzz>``. Reading NIfTI needs
the optional dependency nibabel (``pip install "zsbench[medical]"``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.image_mask_folders import report_unpaired
from zsbench.adapters.layout_search import find_layout
from zsbench.raw_files import relative_posix
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

LUNG_WINDOW_HU = (-1000.0, 400.0)
DEFAULT_NORMAL_STRIDE = 10
DEFAULT_NORMAL_MARGIN = 5
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def import_nibabel() -> ModuleType:
    """nibabel, or an ImportError saying how to install it."""
    try:
        import nibabel
    except ImportError as err:
        raise ImportError('msd: reading NIfTI volumes needs nibabel; install it with '
                          'pip install "zsbench[medical]" (or pip install nibabel).') from err
    return nibabel


def window_to_uint8(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW_HU) -> np.ndarray:
    """Clip to ``window`` (HU) and map linearly to 0..255."""
    low, high = window
    scaled = (np.clip(hu, low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def display_slice(axial: np.ndarray) -> np.ndarray:
    """An axial RAS slice indexed ``[x, y]`` as an image: row 0 anterior, column 0 patient right."""
    return np.ascontiguousarray(axial[::-1, ::-1].T)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def normal_slice_indices(tumour_slices: np.ndarray, stride: int, margin: int) -> list[int]:
    """Tumour-free slices ``z`` with ``z % stride == 0`` at least ``margin`` slices from tumour."""
    depth = len(tumour_slices)
    tumour_z = np.flatnonzero(tumour_slices)
    chosen = []
    for z in range(0, depth, stride):
        distance = np.abs(tumour_z - z).min() if tumour_z.size else depth
        if not tumour_slices[z] and distance >= margin:
            chosen.append(z)
    return chosen


def load_ras_volume(nib: ModuleType, path: Path) -> tuple[np.ndarray, float, float]:
    """Stored voxel values reoriented to RAS, with the (slope, intercept) giving real values."""
    try:
        img = nib.load(str(path))
    except Exception as err:
        raise DatasetLayoutError(f"msd: cannot read the NIfTI volume {path}: {err}") from err
    proxy = img.dataobj
    if nib.is_proxy(proxy):
        raw = np.asarray(proxy.get_unscaled())
        slope = 1.0 if proxy.slope is None else float(proxy.slope)
        inter = 0.0 if proxy.inter is None else float(proxy.inter)
    else:
        raw, slope, inter = np.asarray(proxy), 1.0, 0.0
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise DatasetLayoutError(f"msd: {path} is not a 3-D volume (shape {raw.shape}).")
    orientations = nib.orientations
    to_ras = orientations.ornt_transform(orientations.io_orientation(img.affine),
                                         orientations.axcodes2ornt(("R", "A", "S")))
    return orientations.apply_orientation(raw, to_ras), slope, inter


def _nifti_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES)
            and not p.name.startswith(".")}


def _int_option(options: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = options.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"msd: option {key}={value!r} must be an integer >= {minimum}")
    return value


@register_adapter("msd")
class MSDLungAdapter(DatasetAdapter):
    """MSD Task06 Lung as 2-D axial slices: tumour slices anomalous, distant slices normal.

    Options: ``normal_stride`` (int, default 10), ``normal_margin`` (int, default 5),
    ``strict`` (raise on a volume without a label)."""

    option_types = {"normal_stride": int, "normal_margin": int, "strict": bool}
    info = DatasetInfo(
        name="msd",
        title="Medical Segmentation Decathlon, Task06 Lung (2-D axial slices)",
        domain="medical",
        categories=("lung",),
        prompt_names={"lung": "lung"},
        license="CC BY-SA 4.0",
        rehostable=True,
        citation=("Antonelli et al., The Medical Segmentation Decathlon, Nature Communications "
                  "13, 4128, 2022"),
        homepage="http://medicaldecathlon.com/",
        has_masks=True,
        has_normals=True,
        short_title="MSD (lung)", paper_name="MSD", order=120, install_extra="medical",
        description=(
            "zsbench 2-D protocol for the labelled CT volumes (imagesTr): axial slices in RAS, "
            "radiological view, lung window [-1000, 400] HU mapped to 0..255; slices with "
            "tumour voxels are anomalous (mask = that slice's tumour); tumour-free slices with "
            "z % 10 == 0 and at least 5 slices from any tumour slice are normal. CC BY-SA 4.0: "
            "re-hostable under the same licence."),
    )

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        stride = _int_option(self.options, "normal_stride", DEFAULT_NORMAL_STRIDE, 1)
        margin = _int_option(self.options, "normal_margin", DEFAULT_NORMAL_MARGIN, 0)
        match = find_layout(raw_dir, "msd", (("imagesTr", "labelsTr"),), ("", "Task06_Lung"))
        images_dir, labels_dir = match.folders
        images, labels = _nifti_files(images_dir), _nifti_files(labels_dir)
        if not images:
            raise DatasetLayoutError(f"msd: {images_dir} holds no NIfTI volumes (*.nii.gz).")
        report_unpaired("msd", raw_dir, [images[n] for n in images if n not in labels],
                        [labels[n] for n in labels if n not in images],
                        bool(self.options.get("strict", False)))
        nib = import_nibabel()
        for name, image_path in images.items():
            if name in labels:
                yield from self._volume_records(nib, image_path, labels[name], raw_dir,
                                                stride, margin)

    def _volume_records(self, nib: ModuleType, image_path: Path, label_path: Path,
                        raw_dir: Path, stride: int, margin: int) -> Iterator[RawRecord]:
        volume, slope, inter = load_ras_volume(nib, image_path)
        label, _, _ = load_ras_volume(nib, label_path)
        if volume.shape != label.shape:
            raise DatasetLayoutError(f"msd: {label_path} has shape {label.shape} but its volume "
                                     f"{image_path} has shape {volume.shape}.")
        tumour = label > 0
        tumour_slices = tumour.any(axis=(0, 1))
        normals = set(normal_slice_indices(tumour_slices, stride, margin))
        source = relative_posix(image_path, raw_dir)
        volume_id = image_path.name.split(".")[0]
        logger.info("msd: %s: %d slices, %d with tumour, %d normal", source, volume.shape[2],
                    int(tumour_slices.sum()), len(normals))
        for z in range(volume.shape[2]):
            anomalous = bool(tumour_slices[z])
            if not anomalous and z not in normals:
                continue
            hu = volume[:, :, z].astype(np.float32) * slope + inter
            image = png_bytes(display_slice(window_to_uint8(hu)))
            mask = (png_bytes(display_slice(tumour[:, :, z].astype(np.uint8) * 255))
                    if anomalous else None)
            yield RawRecord(category="lung", label=int(anomalous), split="test",
                            source_path=f"{source}#z={z:03d}", image=image, mask=mask,
                            defect_type="tumor" if anomalous else "good",
                            extra={"volume": volume_id, "z": z})
