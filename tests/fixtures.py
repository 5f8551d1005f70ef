"""Tiny copies of the real datasets in their official layouts, built in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _image(path: Path, seed: int, mode: str = "RGB", size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def make_cub(root: Path, classes: int = 4, per_class: int = 3) -> Path:
    root = Path(root) / "CUB_200_2011"
    lines, labels = [], []
    n = 0
    for c in range(1, classes + 1):
        for j in range(per_class):
            n += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{j}.jpg"
            _image(root / "images" / rel, n, mode="L" if n == 1 else "RGB")
            lines.append(f"{n} {rel}")
            labels.append(f"{n} {c}")
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


def make_cars(root: Path, classes: int = 4, per_class: int = 3) -> Path:
    from scipy.io import savemat

    root = Path(root) / "cars196"
    dtype = [("relative_im_path", object), ("class", object), ("test", object)]
    records = []
    n = 0
    for c in range(1, classes + 1):
        for j in range(per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            _image(root / rel, n, mode="CMYK" if n == 2 else "RGB")
            records.append((rel, np.uint8(c), np.uint8(j % 2)))
    savemat(root / "cars_annos.mat", {"annotations": np.array(records, dtype=dtype).reshape(1, -1)})
    return root


def make_sop(root: Path, classes: int = 6, per_class: int = 2) -> Path:
    root = Path(root) / "Stanford_Online_Products"
    rows = {"train": [], "test": []}
    n = 0
    for c in range(1, classes + 1):
        split = "train" if c <= classes // 2 else "test"
        for j in range(per_class):
            n += 1
            rel = f"bicycle_final/{c}_{j}.JPG"
            _image(root / rel, n)
            rows[split].append(f"{n} {c} 1 {rel}")
    for split in rows:
        (root / f"Ebay_{split}.txt").write_text("image_id class_id super_class_id path\n" + "\n".join(rows[split]) + "\n")
    return root


def make_inshop(root: Path, items: int = 6, per_item: int = 3) -> Path:
    root = Path(root) / "inshop"
    rows = []
    n = 0
    for i in range(1, items + 1):
        item = f"id_{i:08d}"
        for j in range(per_item):
            n += 1
            ext = "png" if n == 3 else "jpg"  # one PNG with alpha among the JPEGs
            name = f"img/WOMEN/Dresses/{item}/{j:02d}_1_front.{ext}"
            _image(root / "Img" / name, n, mode="RGBA" if n == 3 else "RGB")
            if i <= items // 2:
                status = "train"
            else:
                status = "query" if j == 0 else "gallery"
            rows.append(f"{name} {item} {status}")
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(
        f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return root


MAKERS = {"cub": make_cub, "cars": make_cars, "sop": make_sop, "inshop": make_inshop}
