"""LXMERT's pretraining corruptions drawn for a whole batch at once (issue 23).

The rules are masking.py's (the original src/pretrain/lxmert_pretrain.py), applied to arrays:
words chosen with p = rate (the grounded-word rate for grounded tokens), 80% [MASK] / 10% a
random token / 10% kept; objects (real boxes only) chosen with p = rate, 80% zeroed / 10%
replaced by a random box of another image / 10% kept; a QA answer sampled in proportion to its
score. Each function takes the uniforms it consumes (counter_rng.py: a pure function of seed,
epoch and example index), exactly as many per example as masking.py draws from its generator,
so ``tests/data/test_data_draws.py`` checks every rule against masking.py fed the same numbers.
"""
from typing import Dict, Optional

import numpy as np

from .masking import IGNORE_INDEX


def _check_rate(rate: float, name: str) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name}={rate}: a masking rate must be in [0, 1]")


def mask_words(tokens: np.ndarray, lengths: np.ndarray, prob: np.ndarray,
               random_tokens: np.ndarray, mask_id: int, rate: float = 0.15,
               grounded: Optional[np.ndarray] = None, grounded_rate: Optional[float] = None):
    """(ids, labels), both (B, T) int64, for sentences ``tokens`` (B, T) padded after
    ``lengths`` (no [CLS]/[SEP]); ``prob`` (B, T) uniforms, ``random_tokens`` (B, T) ids."""
    _check_rate(rate, "word_mask_rate")
    tokens = np.asarray(tokens, dtype=np.int64)
    valid = np.arange(tokens.shape[1])[None, :] < np.asarray(lengths)[:, None]
    rates = np.full(tokens.shape, float(rate))
    if grounded is not None and grounded_rate is not None and len(grounded):
        _check_rate(grounded_rate, "grounded_mask_rate")
        rates = np.where(np.isin(tokens, grounded), float(grounded_rate), rates)
    chosen = (prob < rates) & valid
    with np.errstate(divide="ignore", invalid="ignore"):
        sub = np.where(rates > 0, prob / np.maximum(rates, 1e-300), 1.0)
    ids = tokens.copy()
    labels = np.where(chosen, tokens, IGNORE_INDEX)
    ids[chosen & (sub < 0.8)] = mask_id
    use_random = chosen & (sub >= 0.8) & (sub < 0.9)
    ids[use_random] = np.asarray(random_tokens, dtype=np.int64)[use_random]
    return ids, labels


def mask_objects(prob: np.ndarray, image_u: np.ndarray, box_u: np.ndarray,
                 image_pos: np.ndarray, num_images: int, box_mask: np.ndarray,
                 rate: float = 0.15) -> Dict[str, np.ndarray]:
    """Object corruption of B examples over N slots: ``prob``, ``image_u``, ``box_u`` (B, N)
    uniforms; ``image_pos`` (B,) the example's image; ``box_mask`` (B, N) real boxes.

    -> chosen / zero / replace (B, N) bool (real boxes only), other_image (B, N) int64 (an
    image other than the example's), other_frac (B, N) float64 (which box of it, as a fraction
    of its box count)."""
    _check_rate(rate, "obj_mask_rate")
    image_pos = np.asarray(image_pos, dtype=np.int64)[:, None]
    other = np.minimum((image_u * max(1, num_images - 1)).astype(np.int64),
                       max(1, num_images - 1) - 1)
    if num_images > 1:
        other = other + (other >= image_pos)              # any image but this one
    else:
        other = np.broadcast_to(image_pos, prob.shape).copy()
    box_mask = np.asarray(box_mask, dtype=bool)
    chosen = (prob < rate) & box_mask
    sub = prob / rate if rate > 0 else np.ones_like(prob)
    return {"chosen": chosen, "zero": chosen & (sub < 0.8),
            "replace": chosen & (sub >= 0.8) & (sub < 0.9),
            "other_image": other, "other_frac": box_u}


def choose_answers(offsets: np.ndarray, answer_ids: np.ndarray, scores: np.ndarray,
                   examples: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(B,) int64: one answer per example from its soft label (CSR ``offsets`` over
    ``answer_ids`` / ``scores``), sampled in proportion to the scores with the uniform ``u``
    (B,) as numpy's ``Generator.choice`` does (inverse CDF); IGNORE_INDEX for an empty label."""
    examples = np.asarray(examples, dtype=np.int64)
    lo, hi = offsets[examples].astype(np.int64), offsets[examples + 1].astype(np.int64)
    count = hi - lo
    out = np.full(len(examples), IGNORE_INDEX, dtype=np.int64)
    if not count.any():
        return out
    width = int(count.max())
    col = np.arange(width)[None, :]
    inside = col < count[:, None]
    where = np.where(inside, lo[:, None] + col, 0)
    ids = np.where(inside, answer_ids[where], IGNORE_INDEX).astype(np.int64)
    vals = np.where(inside, scores[where], 0.0).astype(np.float64)
    total = vals.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cdf = np.cumsum(vals / np.where(total > 0, total, 1.0)[:, None], axis=1)
        cdf = cdf / np.where(cdf[:, -1:] > 0, cdf[:, -1:], 1.0)
    cdf = np.where(inside, cdf, np.inf)
    pick = (cdf <= u[:, None]).sum(1)                     # searchsorted(cdf, u, side="right")
    pick = np.where(total > 0, pick, np.minimum((u * count).astype(np.int64),
                                                np.maximum(count - 1, 0)))
    pick = np.where(count == 1, 0, np.minimum(pick, np.maximum(count - 1, 0)))
    chosen = ids[np.arange(len(examples)), pick]
    return np.where(count > 0, chosen, out)
