"""Tiny copies of the real datasets in their official layouts, built in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import gzip
import struct

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


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """An IDX file of unsigned bytes (the MNIST format), gzipped or not."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fashion(root: Path, per_class: tuple[int, int] = (6, 3), compress: bool = True) -> Path:
    """Fashion-MNIST's four IDX files (not in MAKERS: 28x28 grayscale, protocols of its own): per_class
    (train, test) images of each of the 10 classes, pixel = 10 * class + index, the corner 255."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        labels = np.repeat(np.arange(10), n)
        rng.shuffle(labels)
        images = np.stack([np.full((28, 28), 10 * c + i % 10, dtype=np.uint8) for i, c in enumerate(labels)])
        images[:, 0, 0] = 255
        names = FASHION_FILES[split]
        suffix = ".gz" if compress else ""
        write_idx(root / f"{names[0]}{suffix}", images, compress)
        write_idx(root / f"{names[1]}{suffix}", labels, compress)
    from robustdml.data import fashion
    fashion._read_split.cache_clear()  # a new folder under a reused path must be read again
    return root


FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


MAKERS = {"cub": make_cub, "cars": make_cars, "sop": make_sop, "inshop": make_inshop}
