"""The visual half of a pretraining batch as it leaves the host, and its unpacking into the
model's inputs on the device (issue 23).

A packed visual batch (``PackedVisual``, moved to the device without a dtype cast) holds either
the store's float16 features of the images shown, ``feats`` (B, N, D), with ``lent_feats``
(C, D), the rows that replace corrupted features, or, with the feature table on the device,
only ``image_index`` (B,) and the lent rows' ``lent_image`` / ``lent_box`` (C,); plus the boxes,
box mask, detector labels, and the corruption: ``obj_chosen`` / ``obj_zero`` (B, N) bool and
``lent_slot`` (C,), the flat slot b * N + n each lent row replaces. C is ``lent_capacity``: a
fixed multiple, padding slots write a spare row, so shapes stay static.

``unpack_visual`` makes, on whatever device the tensors are on: ``visual_feats`` (the features
in the compute dtype, zeroed / replaced where the corruption says), ``visual_pos``,
``visual_attention_mask`` and ``obj_labels`` ({"obj": (ids, weight), "attr": (ids, weight),
"feat": (the uncorrupted features, mask)}): one float16 copy crosses to the device, and the
float32/bf16 cast and the regression target are made there.
"""
from typing import Dict, Optional

import torch


class KeepDtype(dict):
    """Tensors that training.engine.to_device moves without casting to the compute dtype."""


class PackedVisual(KeepDtype):
    """A packed visual batch (moved without casting; unpack_visual casts on the device)."""


def lent_capacity(count: int, batch: int, max_boxes: int) -> int:
    """Lent rows padded to a multiple of max(8, B x N / 32) (about 2x the expected 1.5% of
    boxes at B = 256, N = 36), grown by whole multiples when a batch needs more."""
    unit = max(8, (batch * max_boxes) // 32)
    return max(unit, -(-count // unit) * unit)


def _weight(mode: str, conf: torch.Tensor, mask: torch.Tensor, dtype) -> torch.Tensor:
    if mode == "conf":
        return conf.to(dtype)
    if mode == "mask_conf":
        return conf.to(dtype) * mask
    return mask


def _source(v: Dict, table) -> Dict:
    """The per-box tensors of the shown images and the lent rows, from the batch or the table."""
    if "image_index" not in v:
        return v
    if table is None:
        raise ValueError("this batch carries image indices (--features_on_device): the step "
                         "needs the device feature table to unpack it")
    i = v["image_index"]
    out = {k: table[k][i] for k in ("boxes", "objects_id", "objects_conf", "attrs_id",
                                    "attrs_conf")}
    out["feats"], out["box_mask"] = table["features"][i], v["box_mask"]
    if "lent_image" in v:
        rows = table["features"][v["lent_image"], v["lent_box"].clamp(min=0)]
        out["lent_feats"] = rows * (v["lent_box"] >= 0).unsqueeze(-1).to(rows.dtype)
    return out


def unpack_visual(v: Dict, dtype: torch.dtype, obj_predict: Optional[bool] = None,
                  table: Optional[Dict[str, torch.Tensor]] = None) -> Dict:
    """Model keyword arguments from a packed visual batch (see the module docstring)."""
    src = _source(v, table)
    x = src["feats"].to(dtype)                               # (B, N, D)
    out = {"visual_feats": x, "visual_pos": src["boxes"].to(dtype),
           "visual_attention_mask": src["box_mask"].to(dtype), "obj_labels": None}
    if obj_predict is False or "obj_chosen" not in v:
        return out
    B, N, D = x.shape
    corrupted = x.masked_fill(v["obj_zero"].unsqueeze(-1), 0.0)
    flat = torch.cat([corrupted.reshape(B * N, D), corrupted.new_zeros(1, D)])
    flat = flat.index_copy(0, v["lent_slot"], src["lent_feats"].to(dtype))
    out["visual_feats"] = flat[:B * N].view(B, N, D)
    mask = v["obj_chosen"].to(dtype)
    mode = v["obj_loss_weighting"]
    out["obj_labels"] = {
        "obj": (src["objects_id"].long(), _weight(mode, src["objects_conf"], mask, dtype)),
        "attr": (src["attrs_id"].long(), _weight(mode, src["attrs_conf"], mask, dtype)),
        "feat": (x, mask),
    }
    return out
