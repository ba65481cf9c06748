"""Image-text contrastive alignment before fusion (ITC; Li et al. 2021, ALBEF, section 3.2):
an optional sixth pretraining loss, ``LxmertConfig(task_itc=True)``. Not in LXMERT's recipe.

The [CLS] state after the language encoder and the mean of the object states after the
object-relationship encoder (both before the cross-modality layers) are projected to
``itc_dim``, L2-normalised, and compared by cosine / ``itc_temperature`` across the batch: each
sentence must pick its image among the batch's images, and each image its sentences. Only
matched pairs (``matched_label == 1``) are positives: a sentence drawn as a matching negative
describes an image that may not be in the batch, so it is neither a query nor a key. A batch
can hold several sentences of one image: rows whose box sets are identical are the same image
(boxes are never corrupted by the masking), and all of an image's sentences are its positives
(multi-positive InfoNCE: -log of the softmax mass on the positives).

The loss is masked, never indexed (no host synchronisation, static shapes): queries without a
positive weigh 0. It gives the single-modality encoders a direct grounding signal, which the
cross-modality layers otherwise have to discover through the matching and masked-LM losses.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# masks the logits with a finite value: a query with no valid key stays finite (no NaN grads)
_MASKED = -1.0e4


class LxmertContrastiveHead(nn.Module):
    """Projections of the two single-modality encoders' outputs into the shared ITC space."""

    def __init__(self, config):
        super().__init__()
        self.text_proj = nn.Linear(config.hidden_size, config.itc_dim)
        self.image_proj = nn.Linear(config.hidden_size, config.itc_dim)

    def forward(self, lang_states, visn_states, visn_mask):
        """lang_states (B, L, H), visn_states (B, N, H), visn_mask (B, N) 1/0 or None
        -> normalised (B, D) text and image embeddings."""
        if visn_mask is None:
            pooled = visn_states.mean(1)
        else:
            w = visn_mask.to(visn_states.dtype).unsqueeze(-1)          # (B, N, 1)
            pooled = (visn_states * w).sum(1) / w.sum(1).clamp_min(1.0)
        text = F.normalize(self.text_proj(lang_states[:, 0]).float(), dim=-1)
        image = F.normalize(self.image_proj(pooled).float(), dim=-1)
        return text, image


def same_image(visual_pos: torch.Tensor) -> torch.Tensor:
    """(B, N, 4) boxes -> (B, B) bool: rows showing the same image (identical box sets)."""
    flat = visual_pos.reshape(visual_pos.shape[0], -1)
    return (flat[:, None, :] == flat[None, :, :]).all(-1)


def _multi_positive_nll(logits, positive, query_ok, key_ok):
    """Mean over valid queries of -log(softmax mass on the positives); keys outside ``key_ok``
    are excluded from the softmax."""
    logits = logits.masked_fill(~key_ok[None, :], _MASKED)
    log_all = torch.logsumexp(logits, dim=1)
    pos_logits = logits.masked_fill(~positive, _MASKED)
    has_pos = positive.any(1) & query_ok
    log_pos = torch.logsumexp(pos_logits, dim=1)
    nll = torch.where(has_pos, log_all - log_pos, torch.zeros_like(log_all))
    return nll.sum() / has_pos.sum().clamp_min(1)


def itc_loss(text: torch.Tensor, image: torch.Tensor, matched: torch.Tensor,
             visual_pos: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE over the batch (module docstring). text/image (B, D)
    normalised; matched (B,) 1 where the row's sentence belongs to its image; visual_pos (B, N, 4)."""
    if matched.shape != text.shape[:1]:
        raise ValueError(f"ITC: matched_label shape {tuple(matched.shape)}, expected "
                         f"({text.shape[0]},)")
    is_text = matched == 1                                   # sentences with a known image
    positive = same_image(visual_pos) & is_text[:, None]     # (text i, image j)
    logits = text @ image.t() / temperature                  # (B texts, B images)
    everything = torch.ones_like(is_text)
    t2i = _multi_positive_nll(logits, positive, is_text, everything)
    i2t = _multi_positive_nll(logits.t(), positive.t(), everything, is_text)
    return 0.5 * (t2i + i2t)
