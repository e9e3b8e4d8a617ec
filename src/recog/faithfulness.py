"""Do the maps mean anything? The checks that say whether explanations are faithful to the model:
RISE's deletion and insertion curves, and the rank correlation of a trained model's maps with a
randomised one's (Adebayo et al.'s sanity check). ``benchmarks/explain_faithfulness.py`` runs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from recog.inference import Classifier


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, the Spearman rank correlation of two maps (ties get their mean rank), as Adebayo et
    al.'s sanity checks compare a trained model's maps with a randomised one's. NaN where a map is
    constant (a Grad-CAM map with no positive evidence is all zeros): use ``nanmean``."""
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.flatten(1).double().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.flatten(1).double().numpy(), axis=1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    norms = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(norms > 0, (ra * rb).sum(1) / norms.clamp_min(1e-12), torch.nan).float()


@torch.no_grad()
def deletion_insertion(clf: Classifier, images_u8: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                       steps: int = 16, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """RISE's curves (Petsiuk et al., 2018): the target's probability as the most-attributed pixels
    are removed first (deletion: set to the per-channel mean, zero after normalisation) and as they
    are put in first into the mean image (insertion). Returns (deletion, insertion), each
    (N, steps + 1) over fractions 0, 1/steps … 1 of the pixels; their means over the fractions
    (the trapezoid AUC) sum the curve: lower deletion and higher insertion are more faithful."""
    x = clf.normalize(images_u8.to(clf.device)).float()
    n, _, h, w = x.shape
    order = maps.flatten(1).to(clf.device).argsort(1, descending=True)
    curves = {"deletion": [], "insertion": []}
    for k in range(steps + 1):
        top = torch.zeros(n, h * w, device=clf.device)
        top.scatter_(1, order[:, : round(k * h * w / steps)], 1.0)
        top = top.view(n, 1, h, w)
        for name, view in (("deletion", x * (1 - top)), ("insertion", x * top)):
            probs = torch.cat([clf.task.probabilities(clf.model(view[s:s + batch_size]).float())
                               for s in range(0, n, batch_size)])
            curves[name].append(probs.gather(1, targets.to(clf.device).view(-1, 1))[:, 0].cpu())
    return torch.stack(curves["deletion"], 1), torch.stack(curves["insertion"], 1)


def auc(curve: torch.Tensor) -> float:
    """The area under curves sampled at equal steps of [0, 1] (trapezoid rule), averaged over images."""
    return float(((curve[:, 1:] + curve[:, :-1]) / 2).mean())
