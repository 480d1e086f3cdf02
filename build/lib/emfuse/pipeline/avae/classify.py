"""Feature-extraction check: how well a small network tells the material class from an image.

A fused image is only useful if it keeps what identifies the specimen. :func:`train_classifier`
fits a small convolutional classifier (three strided convolutions, global mean and standard
deviation pooling, one linear layer) to random crops of training images of one kind (fused,
HRTEM, BF, ...), each crop standardised on its own so that no absolute level can be used;
:func:`accuracy` scores it on fixed crops of held-out images.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> images = np.stack([rng.random((32, 32)) * (1 + k % 2) for k in range(8)])
>>> net = train_classifier(images, np.arange(8) % 2, n_classes=2, steps=3, crop=16)
>>> 0.0 <= accuracy(net, images, np.arange(8) % 2, crop=16) <= 1.0
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["MaterialClassifier", "accuracy", "train_classifier"]


class MaterialClassifier(nn.Module):
    """(B, 1, c, c) standardised crops -> (B, n_classes) logits."""

    def __init__(self, n_classes: int, features: int = 16):
        super().__init__()
        f = features
        self.body = nn.Sequential(
            nn.Conv2d(1, f, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(f, 2 * f, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * f, 2 * f, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(4 * f, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1))


def _standardised(crops: np.ndarray) -> torch.Tensor:
    c = crops.astype(np.float32)
    mean = c.mean(axis=(-2, -1), keepdims=True)
    std = c.std(axis=(-2, -1), keepdims=True) + 1e-6
    return torch.from_numpy(((c - mean) / std)[:, None])


def _random_crops(images: np.ndarray, labels: np.ndarray, n: int, crop: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(len(images), size=n)
    ys = rng.integers(images.shape[1] - crop + 1, size=n)
    xs = rng.integers(images.shape[2] - crop + 1, size=n)
    crops = np.stack([np.rot90(images[i, y:y + crop, x:x + crop], int(k))
                      for i, y, x, k in zip(idx, ys, xs, rng.integers(4, size=n))])
    return crops, labels[idx]


def train_classifier(images: Any, labels: Any, *, n_classes: int, steps: int = 300, batch: int = 32,
                     crop: int = 64, lr: float = 1e-3, seed: int = 0) -> MaterialClassifier:
    """Fit a :class:`MaterialClassifier` to random crops of ``images`` (N, y, x) with ``labels`` (N,)."""
    imgs = np.asarray(images, dtype=np.float32)
    labs = np.asarray(labels, dtype=np.int64)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = MaterialClassifier(n_classes)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        crops, y = _random_crops(imgs, labs, batch, crop, rng)
        loss = nn.functional.cross_entropy(net(_standardised(crops)), torch.from_numpy(y))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: MaterialClassifier, images: Any, labels: Any, *, crop: int = 64) -> float:
    """Fraction of the non-overlapping ``crop`` x ``crop`` crops of ``images`` classified right."""
    imgs = np.asarray(images, dtype=np.float32)
    labs = np.asarray(labels, dtype=np.int64)
    crops, truth = [], []
    for image, label in zip(imgs, labs):
        for y in range(0, image.shape[0] - crop + 1, crop):
            for x in range(0, image.shape[1] - crop + 1, crop):
                crops.append(image[y:y + crop, x:x + crop])
                truth.append(label)
    predicted = net.eval()(_standardised(np.stack(crops))).argmax(dim=1).numpy()
    return float(np.mean(predicted == np.array(truth)))
