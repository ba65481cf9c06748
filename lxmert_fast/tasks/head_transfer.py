"""Initialising a fine-tuning model from pretrained weights, on state_dict tensors.

``take_answer_head`` splits the pretraining answer head off a state dict before the model loads
the rest through ``from_pretrained``'s path (``lxmert_fast.modeling_loading.load_into``);
``transfer_answer_rows`` then builds the classifier by answer string (``tasks/modelinit.py``).
``init_from_pretrained`` does the whole transfer on state dicts alone.

The encoder (``lxmert.*``) is copied as is. The QA head (``answer_head.logit_fc``: Linear
768->1536, GeLU, LayerNorm, Linear 1536->num_answers) keeps its first layers and takes the rows
of its last Linear from the pretraining 9500-way head by answer string, as the original's
``load_lxmert_qa`` (``src/pretrain/qa_answer_table.py``) does. Rows whose answer the pretraining
table lacks keep the target model's fresh initialisation (the original zeroes them; pass
``unmatched="zero"`` for that).
"""
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch

ENCODER_PREFIX = "lxmert."
HEAD_PREFIX = "answer_head.logit_fc."
LAST = HEAD_PREFIX + "3."  # the answer classifier (Linear 1536 -> num_answers)


class HeadTransferError(ValueError):
    """Pretrained and target weights do not fit; the message names the key and shapes."""


def answer_index(answers: Sequence[str],
                 normalize: Optional[Callable[[str], str]] = None) -> Callable[[str], Optional[int]]:
    """A lookup answer -> row of the pretraining head, matching after ``normalize``."""
    norm = normalize or (lambda a: a)
    table: Dict[str, int] = {}
    for row, ans in enumerate(answers):
        table.setdefault(norm(ans), row)
    return lambda ans: table.get(norm(ans))


def transfer_answer_rows(src_weight: torch.Tensor, src_bias: torch.Tensor,
                         src_index: Callable[[str], Optional[int]],
                         dst_weight: torch.Tensor, dst_bias: torch.Tensor,
                         dst_answers: Sequence[str], unmatched: str = "fresh"):
    """New (weight, bias, matched_labels): row ``label`` of the target head is the source row of
    ``dst_answers[label]`` when ``src_index`` finds it, else fresh (a copy of ``dst_*``) or zero."""
    if unmatched not in ("fresh", "zero"):
        raise ValueError(f"unmatched={unmatched!r}; expected 'fresh' or 'zero'")
    if dst_weight.shape[0] != len(dst_answers) or dst_bias.shape != (len(dst_answers),):
        raise HeadTransferError(f"target head weight {tuple(dst_weight.shape)} / bias "
                                f"{tuple(dst_bias.shape)} do not have {len(dst_answers)} rows")
    if src_weight.shape[1:] != dst_weight.shape[1:]:
        raise HeadTransferError(f"pretrained head rows {tuple(src_weight.shape)} do not fit "
                                f"target rows {tuple(dst_weight.shape)}")
    weight, bias = dst_weight.detach().clone(), dst_bias.detach().clone()
    matched = []
    for label, ans in enumerate(dst_answers):
        row = src_index(ans)
        if row is not None and not 0 <= row < src_weight.shape[0]:
            raise HeadTransferError(f"answer {ans!r} maps to pretrained row {row}, outside "
                                    f"[0, {src_weight.shape[0]})")
        if row is not None:
            weight[label] = src_weight[row].to(weight.dtype)
            bias[label] = src_bias[row].to(bias.dtype)
            matched.append(label)
        elif unmatched == "zero":
            weight[label] = 0.0
            bias[label] = 0.0
    return weight, bias, matched


def take_answer_head(state: Dict[str, torch.Tensor], transfer: bool):
    """Remove the pretraining answer head from ``state`` (our key names), in place: its
    classifier only when ``transfer`` (its first layers then load as they are), all of it
    otherwise (the head stays fresh). Returns the classifier's (weight, bias), or None when
    ``state`` has none or nothing is transferred."""
    head = {k: state.pop(k) for k in [k for k in state
                                     if k.startswith(LAST if transfer else HEAD_PREFIX)]}
    if not transfer or LAST + "weight" not in head or LAST + "bias" not in head:
        return None
    return head[LAST + "weight"], head[LAST + "bias"]


def _copy_matching(target: Dict[str, torch.Tensor], source: Mapping[str, torch.Tensor],
                   prefix: str, required: bool):
    copied = 0
    for key in [k for k in target if k.startswith(prefix)]:
        if key not in source:
            if required:
                raise HeadTransferError(f"pretrained weights lack {key!r} (target shape "
                                        f"{tuple(target[key].shape)})")
            continue
        if source[key].shape != target[key].shape:
            raise HeadTransferError(f"{key}: pretrained shape {tuple(source[key].shape)} != "
                                    f"target shape {tuple(target[key].shape)}")
        target[key] = source[key].detach().to(target[key].dtype).clone()
        copied += 1
    return copied


def init_from_pretrained(model_state: Mapping[str, torch.Tensor],
                         pretrained_state: Mapping[str, torch.Tensor],
                         dst_answers: Optional[Sequence[str]] = None,
                         src_index: Optional[Callable[[str], Optional[int]]] = None,
                         unmatched: str = "fresh"):
    """A full state_dict for the target model and a summary of what came from where.

    Every ``lxmert.*`` tensor must come from ``pretrained_state``. If the target has a QA head,
    the pretrained one exists, and ``dst_answers``/``src_index`` are given, the head is
    transferred (first layers copied, last layer by answer string); otherwise it stays fresh."""
    state = {k: v.detach().clone() for k, v in model_state.items()}
    info = {"encoder_tensors": _copy_matching(state, pretrained_state, ENCODER_PREFIX, True),
            "answers_loaded": 0, "answers_fresh": 0, "head": "fresh"}
    has_head = LAST + "weight" in state and LAST + "weight" in pretrained_state
    if not (has_head and dst_answers is not None and src_index is not None):
        info["answers_fresh"] = len(dst_answers or [])
        return state, info
    for sub in ("0.", "2."):
        _copy_matching(state, pretrained_state, HEAD_PREFIX + sub, True)
    weight, bias, matched = transfer_answer_rows(
        pretrained_state[LAST + "weight"], pretrained_state[LAST + "bias"], src_index,
        state[LAST + "weight"], state[LAST + "bias"], dst_answers, unmatched)
    state[LAST + "weight"], state[LAST + "bias"] = weight, bias
    info.update(head="transferred", answers_loaded=len(matched),
                answers_fresh=len(dst_answers) - len(matched))
    return state, info
