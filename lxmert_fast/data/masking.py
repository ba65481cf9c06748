"""LXMERT's pretraining corruptions, drawn from a per-example numpy Generator.

Semantics of the original src/pretrain/lxmert_pretrain.py (random_word, random_feat,
convert_example_to_features), with every draw taken from the Generator passed in, in a fixed
number per call, so an example depends on (seed, epoch, index) alone:
- words: each token is chosen with p = rate (0.15); a chosen token becomes [MASK] with p = 0.8,
  a uniformly random vocabulary token with p = 0.1, stays with p = 0.1, and its label is the
  original token id; every other position has label -100 (the original's -1, for
  CrossEntropyLoss' default ignore_index).
- objects: each real box is chosen with p = rate (0.15); a chosen feature is zeroed with p = 0.8,
  replaced by the feature of a random box of another image with p = 0.1, kept with p = 0.1; the
  feature regression target is weighted by the mask.
- QA: the answer of a multi-answer soft label is sampled with p proportional to its score (the
  original's np.random.multinomial), a single answer is taken as is.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

IGNORE_INDEX = -100


def _check_rate(rate: float, name: str) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name}={rate}: a masking rate must be in [0, 1]")


def mask_words(token_ids: np.ndarray, rng: np.random.Generator, vocab_size: int, mask_id: int,
               rate: float = 0.15, grounded: Optional[np.ndarray] = None,
               grounded_rate: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(input ids, labels) for one sentence's WordPiece ids (no [CLS]/[SEP]).

    ``grounded`` (sorted token ids of visually grounded words) with ``grounded_rate``: those
    tokens are chosen with ``grounded_rate`` instead of ``rate`` (same draws, same 80/10/10).
    """
    _check_rate(rate, "word_mask_rate")
    n = len(token_ids)
    prob = rng.random(n)
    random_tokens = rng.integers(0, vocab_size, size=n)
    if grounded is not None and grounded_rate is not None:
        _check_rate(grounded_rate, "grounded_mask_rate")
        rate = np.where(np.isin(token_ids, grounded), grounded_rate, rate)
    chosen = prob < rate
    with np.errstate(divide="ignore", invalid="ignore"):
        sub = np.where(rate > 0, prob / np.maximum(rate, 1e-300), 1.0)
    ids = np.asarray(token_ids, dtype=np.int64).copy()
    labels = np.where(chosen, ids, IGNORE_INDEX)
    ids[chosen & (sub < 0.8)] = mask_id
    use_random = chosen & (sub >= 0.8) & (sub < 0.9)
    ids[use_random] = random_tokens[use_random]
    return ids, labels


@dataclass
class ObjectMask:
    """Per-slot draws of one example over ``max_boxes`` slots (restricted to real boxes later)."""
    chosen: np.ndarray      # (N,) bool: box is masked (predict its feature)
    zero: np.ndarray        # (N,) bool: feature zeroed
    replace: np.ndarray     # (N,) bool: feature taken from another image
    other_image: np.ndarray  # (N,) int64: position in the image list of the replacing image
    other_frac: np.ndarray  # (N,) float: which box of that image, as a fraction of its count


def draw_object_mask(rng: np.random.Generator, max_boxes: int, image_pos: int, num_images: int,
                     rate: float = 0.15) -> ObjectMask:
    """Draw the object corruption of one example whose image is ``image_pos`` of ``num_images``.

    Draws cover all ``max_boxes`` slots (a fixed number of draws); ``restrict`` then keeps the
    slots that hold real boxes, once the image's box count is known.
    """
    _check_rate(rate, "obj_mask_rate")
    prob = rng.random(max_boxes)
    other = rng.integers(0, max(1, num_images - 1), size=max_boxes)
    frac = rng.random(max_boxes)
    if num_images > 1:
        other = other + (other >= image_pos)        # any image but this one
    else:
        other = np.full(max_boxes, image_pos)
    chosen = prob < rate
    sub = prob / rate if rate > 0 else np.ones_like(prob)
    return ObjectMask(chosen=chosen, zero=chosen & (sub < 0.8),
                      replace=chosen & (sub >= 0.8) & (sub < 0.9),
                      other_image=other.astype(np.int64), other_frac=frac)


def restrict(mask: ObjectMask, box_mask: np.ndarray) -> ObjectMask:
    """``mask`` with the slots that hold no real box (``box_mask`` False) left unmasked."""
    box_mask = np.asarray(box_mask, dtype=bool)
    return ObjectMask(chosen=mask.chosen & box_mask, zero=mask.zero & box_mask,
                      replace=mask.replace & box_mask, other_image=mask.other_image,
                      other_frac=mask.other_frac)


def choose_answer(label: Dict[int, float], rng: np.random.Generator) -> int:
    """One answer id from a soft label {answer id: score} (original: multinomial on scores)."""
    keys = list(label.keys())
    if len(keys) == 1:
        return int(keys[0])
    values = np.asarray([label[k] for k in keys], dtype=np.float64)
    total = values.sum()
    if total <= 0:
        return int(keys[int(rng.integers(len(keys)))])
    return int(keys[int(rng.choice(len(keys), p=values / total))])
