"""Fixture trees in the download layouts of the medical datasets (Kvasir-SEG, CVC-*, Endo, TN3K,
ISIC 2016, BrainMRI, Br35H, LAG, MSD Task06 Lung), with the odd cases of the real downloads.

Each ``make_<dataset>(root)`` writes the tree under ``root`` and returns what the adapter must
find: ``anomalous`` and ``normal`` counts, and the source paths that must be skipped or used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.raw_layouts._draw import write_image, write_mask, write_text

SIZE = (24, 32)  # (h, w): tiny images keep the tests fast


def _pairs(images_dir: Path, masks_dir: Path, names: list[tuple[str, str]],
           mode: str = "RGB", mask_rgb: bool = False) -> None:
    """Write ``(image name, mask name)`` pairs; the mask is drawn from the image's seed."""
    for seed, (image_name, mask_name) in enumerate(names):
        write_image(images_dir / image_name, SIZE, mode=mode, seed=seed)
        write_mask(masks_dir / mask_name, SIZE, seed=seed, rgb=mask_rgb)


def make_kvasir(root: Path) -> dict[str, Any]:
    """``Kvasir-SEG/{images,masks}/<id>.jpg`` with RGB JPEG masks (compression noise), a mask
    whose image is missing (sorts first: index pairing would shift every pair) and an image
    without a mask."""
    base = root / "Kvasir-SEG"
    ids = ["cju0qkwl35piu0993l0dewei2", "cju1amqw6p8pw0993d9gc5crl", "cju2zr3c3vwb00993jn06bbaz"]
    _pairs(base / "images", base / "masks", [(f"{i}.jpg", f"{i}.jpg") for i in ids],
           mask_rgb=True)
    write_mask(base / "masks" / "aaa_no_image.jpg", SIZE, seed=9, rgb=True)
    write_image(base / "images" / "zzz_no_mask.jpg", SIZE, seed=8)
    write_text(base / ".DS_Store", "junk")
    return {"anomalous": 3, "normal": 0, "ids": ids,
            "skipped": ["Kvasir-SEG/images/zzz_no_mask.jpg"],
            "orphan_masks": ["Kvasir-SEG/masks/aaa_no_image.jpg"]}


def make_cvc_colondb(root: Path) -> dict[str, Any]:
    """PraNet copy ``TestDataset/CVC-ColonDB/{images,masks}/N.png`` with an RGBA image;
    numeric names whose string order (1, 10, 2) differs from numeric order."""
    base = root / "TestDataset" / "CVC-ColonDB"
    names = ["1.png", "10.png", "2.png"]
    _pairs(base / "images", base / "masks", [(n, n) for n in names])
    write_image(base / "images" / "3.png", SIZE, mode="RGBA", seed=3)
    write_mask(base / "masks" / "3.png", SIZE, seed=3)
    return {"anomalous": 4, "normal": 0}


def make_cvc_clinicdb(root: Path, layout: str = "original") -> dict[str, Any]:
    """``original``: ``Original/`` + ``Ground Truth/`` .tif; ``kaggle``: the same pair under
    both ``PNG/`` and ``TIF/`` (must be read once); ``pranet``: ``images/`` + ``masks/``."""
    base = root / "CVC-ClinicDB"
    names = ["1", "2", "11"]
    if layout == "original":
        _pairs(base / "Original", base / "Ground Truth", [(f"{n}.tif", f"{n}.tif") for n in names])
    elif layout == "kaggle":
        for folder, suffix in (("PNG", ".png"), ("TIF", ".tif")):
            _pairs(base / folder / "Original", base / folder / "Ground Truth",
                   [(n + suffix, n + suffix) for n in names])
    elif layout == "pranet":
        _pairs(base / "images", base / "masks", [(f"{n}.png", f"{n}.png") for n in names])
    else:
        raise ValueError(f"unknown CVC-ClinicDB fixture layout {layout!r}")
    return {"anomalous": 3, "normal": 0}


def make_endo(root: Path) -> dict[str, Any]:
    """``images/*.JPG`` (upper-case extension) + ``masks/*.png`` of the same stems."""
    names = ["ck2bxknhjvs1x0794iogrq49k", "ck2bxlujamu330725szlc2jdu"]
    _pairs(root / "images", root / "masks", [(f"{n}.JPG", f"{n}.png") for n in names])
    return {"anomalous": 2, "normal": 0}


def make_tn3k(root: Path) -> dict[str, Any]:
    """``Thyroid Dataset/tn3k/test-{image,mask}/NNNN.jpg`` (greyscale), with ``trainval-*``
    folders beside them that must not be read."""
    base = root / "Thyroid Dataset" / "tn3k"
    names = ["0000.jpg", "0001.jpg", "0002.jpg"]
    _pairs(base / "test-image", base / "test-mask", [(n, n) for n in names], mode="L")
    _pairs(base / "trainval-image", base / "trainval-mask", [("0100.jpg", "0100.jpg")], mode="L")
    return {"anomalous": 3, "normal": 0}


def make_isic(root: Path) -> dict[str, Any]:
    """``ISBI2016_ISIC_Part1_Test_Data/<id>.jpg`` + ``..._GroundTruth/<id>_Segmentation.png``,
    plus a mask without an image."""
    ids = ["ISIC_0000003", "ISIC_0000012", "ISIC_0000013"]
    _pairs(root / "ISBI2016_ISIC_Part1_Test_Data", root / "ISBI2016_ISIC_Part1_Test_GroundTruth",
           [(f"{i}.jpg", f"{i}_Segmentation.png") for i in ids])
    write_mask(root / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000001_Segmentation.png",
               SIZE, seed=7)
    return {"anomalous": 3, "normal": 0, "ids": ids}


def make_brainmri(root: Path) -> dict[str, Any]:
    """``brain_tumor_dataset/{yes,no}/`` with mixed extensions, spaces, RGBA and greyscale
    images, plus the duplicate ``yes/`` + ``no/`` pair at the root (must not be counted)."""
    yes = [("Y1.jpg", "RGB"), ("Y2.JPG", "RGB"), ("Y 3.jpeg", "L"), ("y4.png", "RGBA")]
    no = [("1 no.jpeg", "RGB"), ("No12.jpg", "L"), ("no 5.png", "RGBA")]
    for base in (root / "brain_tumor_dataset", root):
        for folder, files in (("yes", yes), ("no", no)):
            for seed, (name, mode) in enumerate(files):
                write_image(base / folder / name, SIZE, mode=mode, seed=seed)
    return {"anomalous": len(yes), "normal": len(no), "prefix": "brain_tumor_dataset/"}


def make_br35h(root: Path) -> dict[str, Any]:
    """``yes/``, ``no/`` and the unlabelled ``pred/`` folder (must be ignored)."""
    for folder, count in (("yes", 3), ("no", 2), ("pred", 4)):
        for i in range(count):
            write_image(root / folder / f"{folder[0]}{i}.jpg", SIZE, seed=i)
    return {"anomalous": 3, "normal": 2}


def make_lag(root: Path, flat: bool = False) -> dict[str, Any]:
    """``LAG_database_part_1/{suspicious_glaucoma,non_glaucoma}/image/`` with ``attention_map/``
    beside each (must be ignored); ``flat`` puts the images directly in the class folders."""
    base = root / "LAG_database_part_1"
    for folder, count in (("suspicious_glaucoma", 2), ("non_glaucoma", 3)):
        images = base / folder if flat else base / folder / "image"
        for i in range(count):
            write_image(images / f"{i:04d}.jpg", SIZE, seed=i)
            write_image(base / folder / "attention_map" / f"{i:04d}.jpg", SIZE, mode="L", seed=i)
    return {"anomalous": 2, "normal": 3}


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` as a gzipped NIfTI volume (needs nibabel)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


# Tumour slices of the two MSD fixture volumes and what the default protocol selects
# (normals: z % 10 == 0 and >= 5 slices from a tumour slice).
MSD_VOLUMES = {
    "lung_001": {"depth": 30, "tumour_z": [12, 13, 14], "normal_z": [0, 20]},
    "lung_003": {"depth": 25, "tumour_z": [3], "normal_z": [10, 20]},
}
MSD_TUMOUR_VOXEL = (2, 3)  # (x, y) of the tumour in every tumour slice
MSD_XY = (10, 8)  # volume shape in x, y


def make_msd(root: Path) -> dict[str, Any]:
    """``Task06_Lung/{imagesTr,labelsTr}/lung_NNN.nii.gz`` (int16 HU, uint8 labels),
    ``dataset.json``, a macOS ``._`` file and an unlabelled ``imagesTs`` volume."""
    base = root / "Task06_Lung"
    nx, ny = MSD_XY
    for name, spec in MSD_VOLUMES.items():
        depth = spec["depth"]
        hu = np.full((nx, ny, depth), -1000, dtype=np.int16)  # air
        hu[nx // 2:, :, :] = 40  # soft tissue in the patient's right half (high x)
        label = np.zeros((nx, ny, depth), dtype=np.uint8)
        x, y = MSD_TUMOUR_VOXEL
        for z in spec["tumour_z"]:
            label[x, y, z] = 1
            hu[x, y, z] = 400
        write_nifti(base / "imagesTr" / f"{name}.nii.gz", hu)
        write_nifti(base / "labelsTr" / f"{name}.nii.gz", label)
    write_nifti(base / "imagesTs" / "lung_002.nii.gz", np.zeros((nx, ny, 5), dtype=np.int16))
    (base / "imagesTr" / "._lung_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    write_text(base / "dataset.json", json.dumps({
        "name": "Lung", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "cancer"},
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"}
                     for n in MSD_VOLUMES]}))
    anomalous = sum(len(v["tumour_z"]) for v in MSD_VOLUMES.values())
    normal = sum(len(v["normal_z"]) for v in MSD_VOLUMES.values())
    return {"anomalous": anomalous, "normal": normal}
