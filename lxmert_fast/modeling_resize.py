"""Vocabulary resizing for the LXMERT models, as transformers' (v5)
``PreTrainedModel.resize_token_embeddings`` and ``LxmertForPreTraining.resize_token_embeddings``.

Rows ``[0, min(old, new))`` are kept; growing appends rows at the end, shrinking drops them.
Added rows are initialised as transformers does:
- ``mean_resizing=True`` (transformers' default): sampled from a normal with the old rows' mean
  and ``1e-9`` times their covariance (Hewitt 2021, "Initializing new word embeddings for
  pretrained language models"); the mean itself when that covariance is not positive definite.
  The sample draws from torch's global generator; its spread is ~3e-5 of the old rows' so the
  added rows are the mean to within that.
- ``mean_resizing=False``: normal(0, ``initializer_range``), the model's weight init.
- The MLM output bias gets zeros for added tokens (transformers' ``_resize_bias``).

Where transformers 5 is inconsistent, these functions keep every vocabulary-sized tensor the
same size: with ``pad_to_multiple_of`` the MLM bias follows the padded size (transformers resizes
it to the unpadded ``new_num_tokens``); an untied MLM decoder (``tie_word_embeddings=False``) is
resized too (transformers leaves it at the old size); ``decoder.out_features`` is updated.
"""
from typing import Optional

import torch
from torch import nn
from torch.distributions import constraints

MEAN_RESIZING_EPS = 1e-9  # transformers' covariance scale for the added rows


def new_vocab_size(old: int, new_num_tokens: Optional[int],
                   pad_to_multiple_of: Optional[int]) -> int:
    """The resized vocabulary: ``new_num_tokens`` (default ``old``) rounded up to a multiple of
    ``pad_to_multiple_of``; both must be positive integers."""
    for name, value in (("new_num_tokens", new_num_tokens),
                        ("pad_to_multiple_of", pad_to_multiple_of)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0):
            raise ValueError(f"resize_token_embeddings: {name} must be a positive integer or "
                             f"None, got {value!r}")
    size = old if new_num_tokens is None else new_num_tokens
    if pad_to_multiple_of is not None:
        size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
    return size


def check_not_partitioned(weight: torch.Tensor, name: str):
    if hasattr(weight, "ds_id"):
        raise RuntimeError(f"resize_token_embeddings: {name} is partitioned by DeepSpeed ZeRO-3 "
                           f"(ds_id {weight.ds_id}); resize the model before "
                           "deepspeed.initialize")


@torch.no_grad()
def _added_rows(old_weight: torch.Tensor, added: int, mean_resizing: bool,
                std: float) -> torch.Tensor:
    """(added, dim) initial rows for new tokens, in the old weight's dtype and device."""
    if not mean_resizing:
        return torch.empty(added, old_weight.shape[1], dtype=old_weight.dtype,
                           device=old_weight.device).normal_(0.0, std)
    old32 = old_weight.to(torch.float32)
    mean = old32.mean(dim=0)  # (dim,)
    centered = old32 - mean
    covariance = centered.T @ centered / old32.shape[0]  # (dim, dim)
    scaled = MEAN_RESIZING_EPS * covariance
    if constraints.positive_definite.check(scaled).all():
        dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=scaled)
        rows = dist.sample((added,))
    else:
        rows = mean[None].repeat(added, 1)
    return rows.to(old_weight.dtype)


@torch.no_grad()
def resized_rows(old_weight: torch.Tensor, size: int, mean_resizing: bool,
                 std: float) -> nn.Parameter:
    """``old_weight`` (V, dim) as a (size, dim) parameter: first rows kept, new rows initialised."""
    old = old_weight.shape[0]
    keep = old_weight[:size]
    if size > old:
        keep = torch.cat([keep, _added_rows(old_weight, size - old, mean_resizing, std)])
    return nn.Parameter(keep.clone(), requires_grad=old_weight.requires_grad)


def resize_embedding_(embedding: nn.Embedding, size: int, mean_resizing: bool,
                      std: float) -> nn.Embedding:
    """Resize ``embedding`` in place (the module is kept; its weight is a new parameter)."""
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"resize_token_embeddings: input embeddings are "
                        f"{type(embedding).__name__}, expected nn.Embedding")
    check_not_partitioned(embedding.weight, "the word embedding")
    if size != embedding.num_embeddings:
        embedding.weight = resized_rows(embedding.weight, size, mean_resizing, std)
        embedding.num_embeddings = size
    if embedding.padding_idx is not None and embedding.padding_idx >= size:
        embedding.padding_idx = None
    return embedding


def resize_linear_(linear: nn.Linear, size: int, mean_resizing: bool, std: float) -> nn.Linear:
    """Resize an (untied) output layer's ``out_features`` in place; a bias gets zeros (as the
    model's init) for the added outputs."""
    check_not_partitioned(linear.weight, "the output layer")
    if size != linear.out_features:
        linear.weight = resized_rows(linear.weight, size, mean_resizing, std)
        if linear.bias is not None:
            linear.bias = resized_bias(linear.bias, size)
        linear.out_features = size
    return linear


@torch.no_grad()
def resized_bias(bias: torch.Tensor, size: int) -> nn.Parameter:
    """(V,) -> (size,): first entries kept, zeros appended."""
    check_not_partitioned(bias, "the output bias")
    kept = bias[:size]
    if size > bias.shape[0]:
        kept = torch.cat([kept, bias.new_zeros(size - bias.shape[0])])
    return nn.Parameter(kept.clone(), requires_grad=bias.requires_grad)
