"""Heads that replace a model's linear classifier (:func:`recog.models.replace_head`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TextHead(nn.Module):
    """Labels as language (DeViSE / CLIP-style): the image features, projected into the text
    encoder's space and normalised, scored against one fixed, normalised prompt embedding per
    class, times a learned temperature. The prompt embeddings are a buffer: they travel in the
    weights, and :meth:`set_classes` swaps in another label set at prediction time."""

    def __init__(self, in_features: int, prompts: torch.Tensor) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, prompts.shape[1])
        self.register_buffer("prompts", F.normalize(prompts.float(), dim=1))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        # a temperature, not a bias: the recipes' 64x bias learning rate collapsed it (every logit equal, loss ln K)
        setattr(self.logit_scale, "recog_plain_lr", True)

    @property
    def in_features(self) -> int:
        return self.proj.in_features

    @property
    def out_features(self) -> int:
        return self.prompts.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.proj(features), dim=-1)
        return self.logit_scale.exp().clamp(max=100.0) * z @ self.prompts.to(z.dtype).t()

    def set_classes(self, prompts: torch.Tensor) -> None:
        """Classify among other classes: one (already encoded) prompt embedding per class."""
        self.prompts = F.normalize(prompts.float(), dim=1).to(self.prompts.device)
