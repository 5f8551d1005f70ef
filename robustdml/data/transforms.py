"""Image transforms of the Proxy Anchor recipe. No mean/std normalisation here: that lives inside
the model, so attacks work in [0, 1] pixel space."""

from __future__ import annotations

from torchvision import transforms as T


def train_transform(size: int = 224) -> T.Compose:
    """RandomResizedCrop + horizontal flip, as in the Proxy Anchor reference training."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])


def test_transform(size: int = 224) -> T.Compose:
    """Resize to size·8/7 (256 for 224) then centre crop."""
    return T.Compose([T.Resize(round(size * 8 / 7)), T.CenterCrop(size), T.ToTensor()])


def image_transform(train: bool, size: int = 224) -> T.Compose:
    return train_transform(size) if train else test_transform(size)
