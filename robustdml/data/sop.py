"""Stanford Online Products from its official layout: ``Ebay_train.txt``, ``Ebay_test.txt`` and the
category folders they name (columns: image_id class_id super_class_id path, one header line)."""

from __future__ import annotations

from .base import DatasetSpec, ImageListDataset, parse_int, read_table, register_dataset, require_files
from .transforms import image_transform

SOURCE = "Stanford_Online_Products.zip from the Stanford Online Products page"


def read_sop(root, split: str = "train", train: bool = False, image_size: int = 224) -> ImageListDataset:
    index = "Ebay_train.txt" if split == "train" else "Ebay_test.txt"
    root = require_files(root, ["Ebay_train.txt", "Ebay_test.txt"], "sop", SOURCE)
    rows = read_table(root / index, 4, skip=1)
    class_ids = [parse_int(r[1], str(root / index)) for r in rows]
    return ImageListDataset([root / r[3] for r in rows], class_ids, image_transform(train, image_size))


SOP = register_dataset(DatasetSpec(
    name="sop", reader=read_sop, splits=("train", "test"), recall_ks=(1, 10, 100, 1000), eps=8 / 255))
