"""In-Shop Clothes Retrieval from its official layout: ``Eval/list_eval_partition.txt`` and ``Img/``.

The partition file starts with a count line and a header line, then rows
``image_name item_id evaluation_status`` with status train / query / gallery. Query and gallery share
one label space so query-against-gallery retrieval compares the same item ids.
"""

from __future__ import annotations

import re

from ..errors import DatasetError
from .base import DatasetSpec, ImageListDataset, read_table, register_dataset, require_files
from .transforms import image_transform

SOURCE = "In-shop Clothes Retrieval Benchmark (DeepFashion): Img/ and Eval/list_eval_partition.txt"
PARTITION = "Eval/list_eval_partition.txt"


def _item_number(item: str, where: str) -> int:
    digits = re.sub(r"\D", "", item)
    if not digits:
        raise DatasetError(f"{where}: item id {item!r} has no number")
    return int(digits)


def read_inshop(root, split: str = "train", train: bool = False, image_size: int = 224) -> ImageListDataset:
    root = require_files(root, [PARTITION, "Img"], "inshop", SOURCE)
    where = str(root / PARTITION)
    rows = read_table(root / PARTITION, 3, skip=2)
    statuses = {r[2] for r in rows}
    unknown = statuses - {"train", "query", "gallery"}
    if unknown:
        raise DatasetError(f"{where}: unknown evaluation_status {sorted(unknown)}; expected train, query, gallery")
    chosen = [r for r in rows if r[2] == split]
    label_space = sorted({_item_number(r[1], where) for r in rows if r[2] in (("train",) if split == "train" else ("query", "gallery"))})
    return ImageListDataset(
        [root / "Img" / r[0] for r in chosen], [_item_number(r[1], where) for r in chosen],
        image_transform(train, image_size), label_space=label_space)


INSHOP = register_dataset(DatasetSpec(
    name="inshop", reader=read_inshop, splits=("train", "query", "gallery"), recall_ks=(1, 10, 20, 30, 40, 50),
    eps=8 / 255, query_split="query", gallery_split="gallery"))
