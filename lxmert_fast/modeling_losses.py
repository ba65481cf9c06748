"""Loss terms of LXMERT pretraining (Tan & Bansal 2019, section 3.1) and fine-tuning.

Defaults are transformers' exactly (the drop-in behaviour):
- MLM, matching and pretraining QA: cross-entropy, mean over labels != -100.
- obj / attr: per-object cross-entropy (ignored labels count 0) times the caller's weight, mean over
  all B*N objects, times ``visual_loss_normalizer`` (6.67 = 1/0.15); feat: SmoothL1 over the
  feature dims (mean), times the weight, mean over objects, times the normaliser.
- fine-tuning QA (``LxmertForQuestionAnswering``, ``qa_loss="ce"``): cross-entropy on (B,) labels.

The original repository's recipe, available as options:
- confidence-weighted obj/attr losses: the weighting IS the caller's ``obj_labels`` weight. Pass
  ``detector_conf * mask`` for "obj"/"attr" and ``mask`` for "feat" (what the original's data
  pipeline computes); pass ``mask`` everywhere for an unweighted masked-object loss.
- ``qa_loss="bce"``: BCE-with-logits on soft answer scores (B, num_answers), mean, times
  num_answers (the original VQA/GQA fine-tuning loss).

One deliberate difference: where every label of a cross-entropy term is -100 (no masked token in
the batch, no QA label), transformers returns NaN; we return 0 (with zero gradients).
"""
import warnings
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def legacy_mlm_labels(labels, masked_lm_labels):
    """``labels``, or ``masked_lm_labels`` (its old name) with a FutureWarning, as transformers
    4 did; giving both is an error. (transformers 5 swallows ``masked_lm_labels`` in ``**kwargs``
    and computes no MLM loss.)"""
    if masked_lm_labels is None:
        return labels
    if labels is not None:
        raise ValueError("LxmertForPreTraining: give labels or masked_lm_labels (its old name), "
                         "not both")
    warnings.warn("LxmertForPreTraining: masked_lm_labels is deprecated; use labels",
                  FutureWarning, stacklevel=3)
    return masked_lm_labels


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, name: str) -> torch.Tensor:
    """Mean cross-entropy over labels != -100 (0 when there are none)."""
    num_classes = logits.shape[-1]
    if labels.numel() * num_classes != logits.numel():
        raise ValueError(f"{name}: labels shape {tuple(labels.shape)} does not match logits "
                         f"shape {tuple(logits.shape)} ({num_classes} classes)")
    flat = labels.reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, num_classes), flat, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / (flat != IGNORE_INDEX).sum().clamp_min(1)


def soft_bce(logits: torch.Tensor, targets: torch.Tensor, name: str = "labels") -> torch.Tensor:
    """The original LXMERT VQA/GQA loss: BCE-with-logits (mean) times the number of answers."""
    if tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(f"{name}: qa_loss='bce' needs soft scores of shape "
                         f"{tuple(logits.shape)} (B, num_qa_labels); got {tuple(targets.shape)}")
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype)) * logits.shape[1]


def _visual_term(key: str, scores: torch.Tensor, label: torch.Tensor, weight: torch.Tensor,
                 num: int, num_objects: int) -> torch.Tensor:
    pred = scores.reshape(-1, num)  # (B*N, num)
    if weight.numel() != num_objects:
        raise ValueError(f"obj_labels[{key!r}] weight shape {tuple(weight.shape)} does not "
                         f"match the {num_objects} objects (B, N) of the batch")
    if key == "feat":
        if label.numel() != pred.numel():
            raise ValueError(f"obj_labels['feat'] features shape {tuple(label.shape)}, "
                             f"expected (B, N, {num})")
        loss = F.smooth_l1_loss(pred, label.reshape(-1, num).to(pred.dtype),
                                reduction="none").mean(1)
    else:
        if label.numel() != num_objects:
            raise ValueError(f"obj_labels[{key!r}] ids shape {tuple(label.shape)} does not "
                             f"match the {num_objects} objects (B, N) of the batch")
        loss = F.cross_entropy(pred, label.reshape(-1), reduction="none")
    return (loss * weight.reshape(-1)).mean()


def visual_losses(scores: Dict[str, torch.Tensor], obj_labels: Dict[str, Tuple],
                  sizes: Dict[str, int], normalizer: float) -> Dict[str, torch.Tensor]:
    """The masked-object losses named in ``sizes`` ("obj", "attr", "feat" -> output width)."""
    if not isinstance(obj_labels, dict):
        raise ValueError(f"obj_labels must be a dict of (label, weight) pairs, got "
                         f"{type(obj_labels).__name__}")
    out = {}
    for key, num in sizes.items():
        if key not in obj_labels:
            raise ValueError(f"obj_labels has no {key!r} entry; the config's visual losses need "
                             f"{sorted(sizes)} (got {sorted(obj_labels)})")
        label, weight = obj_labels[key]
        num_objects = scores[key].numel() // num
        out[key] = _visual_term(key, scores[key], label, weight, num, num_objects) * normalizer
    return out


def pretraining_total(losses: Dict[str, torch.Tensor], device) -> torch.Tensor:
    """Sum the terms in transformers' order: mlm, matched, (obj + attr + feat), qa; then itc."""
    total = torch.full((), 0.0, device=device)
    for key in ("mlm", "matched"):
        if key in losses:
            total = total + losses[key]
    if any(key in losses for key in ("obj", "attr", "feat")):
        visual = torch.full((), 0.0, device=device)
        for key in ("obj", "attr", "feat"):
            if key in losses:
                visual = visual + losses[key]
        total = total + visual
    if "qa" in losses:
        total = total + losses["qa"]
    if "itc" in losses:             # the optional contrastive term (modeling_itc.py)
        total = total + losses["itc"]
    return total
