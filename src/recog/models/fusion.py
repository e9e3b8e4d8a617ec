"""Image + text fusion (``fusion:<image-model>``): an image model's features and a sentence
embedding of the item's text, fused, then one classifier head.

- ``concat`` (default): both projected to ``hidden``, concatenated, an MLP;
- ``gated``: a learned per-feature gate mixes the two projections (``g * image + (1 - g) * text``),
  the gated multimodal unit of Arevalo et al. (2017).

The text arrives as an already computed, normalised embedding (the frozen encoder of
:mod:`recog.text` runs once per text, before training); the model never sees strings. A missing
text is the encoder's embedding of the empty string, which the model carries as a buffer, so an
image alone can always be classified. ``modalities`` trains on one input only (the ablations);
``use`` switches an input off at evaluation (``recog eval --ablate``): the image's place is then
taken by a learned "no image" vector, the text's by the empty-text embedding. While both
modalities train, each is dropped for ``modality_dropout`` of the items, so that both
single-input evaluations stay meaningful.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recog.config import FUSIONS, MODALITIES, parse_modalities
from recog.errors import ConfigError


class FusionNet(nn.Module):
    head_name = "classifier.3"  # the last layer, as models.head reads it

    def __init__(self, image_model: nn.Module, image_features: int, num_classes: int, text_dim: int = 384,
                 fusion: str = "concat", hidden: int = 256, modalities: Any = MODALITIES,
                 dropout: float = 0.1, modality_dropout: float = 0.1) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}; got {fusion!r}")
        text_dim, hidden, modalities = int(text_dim), int(hidden), parse_modalities(modalities)
        self.image = image_model  # its own head replaced by nn.Identity: it gives features
        self.fusion, self.modalities, self.modality_dropout = fusion, modalities, float(modality_dropout)
        self.use: tuple[str, ...] = modalities  # what evaluation feeds (--ablate switches one off)
        self.image_proj = nn.Sequential(nn.LayerNorm(image_features), nn.Linear(image_features, hidden))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden))
        self.no_image = nn.Parameter(torch.zeros(hidden))
        self.register_buffer("empty_text", torch.zeros(text_dim))  # filled with the encoder's "" by build
        self.gate = nn.Linear(2 * hidden, hidden) if fusion == "gated" else None
        width = hidden if fusion == "gated" else 2 * hidden
        self.classifier = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                                        nn.Linear(hidden, num_classes))

    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        n = len(images)
        if text is None or "text" not in self.use:
            text = self.empty_text.expand(n, -1)
        if "image" in self.use:
            a = self.image_proj(torch.flatten(self.image(images), 1))
        else:
            a = self.no_image.expand(n, -1)
        if self.training and self.modalities == MODALITIES and self.modality_dropout > 0:
            drop = torch.rand(2, n, 1, device=text.device) < self.modality_dropout
            a = torch.where(drop[0], self.no_image, a)  # never both: one input always stays
            text = torch.where(drop[1] & ~drop[0], self.empty_text, text)
        b = self.text_proj(text.float())
        if self.gate is not None:
            g = torch.sigmoid(self.gate(torch.cat([a, b.to(a.dtype)], 1)))
            fused = g * a + (1 - g) * b
        else:
            fused = torch.cat([a, b.to(a.dtype)], 1)
        return self.classifier(fused)

    # what the engine asks of an image model, passed on to it
    def data_init(self, images: torch.Tensor) -> None:
        if hasattr(self.image, "data_init"):
            self.image.data_init(images)

    def freeze_stem(self) -> None:
        if not hasattr(self.image, "freeze_stem"):
            raise ConfigError("freeze_stem_epochs: this fusion model's image model has no stem to freeze")
        self.image.freeze_stem()


FUSION_ARGS = ("fusion", "text_dim", "hidden", "modalities", "modality_dropout")  # the rest: the image model's
