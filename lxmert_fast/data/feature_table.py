"""The whole feature store as one table in device memory (``--features_on_device``, issue 23).

LXMERT's 180k pretraining images x 36 boxes x 2048 float16 are 26.5 GB: they fit an H100's
80 GB beside the base model at batch 256 (an H200 has 141 GB). Loaded once per rank, batches
then carry image indices only and the step gathers features, boxes and detector labels with a
device index (data/batch.py). On a CPU the same code runs with the table as CPU tensors, so the
tests compare its batches with the host path's, bit for bit.

``auto`` turns it on on CUDA when the table fits in the free device memory after the engine is
built, leaving ``STEP_RESERVE_BYTES`` for the step's activations (the base model's bf16 step at
batch 256 peaks near 20 GB), and says so either way; on a CPU ``auto`` is off (the host path
reads the same pages through the page cache).
"""
from typing import Dict, Optional, Tuple

import numpy as np
import torch

MODES = ("auto", "on", "off")
STEP_RESERVE_BYTES = 24 << 30
PER_BOX = {"boxes": (torch.float32, 16), "box_mask": (torch.bool, 1),
           "objects_id": (torch.int64, 8), "objects_conf": (torch.float32, 4),
           "attrs_id": (torch.int64, 8), "attrs_conf": (torch.float32, 4)}


def table_bytes(features, max_boxes: int) -> int:
    """Device bytes of the table of ``features`` at ``max_boxes`` boxes per image."""
    per_box = features.dim * np.dtype(features.dtype).itemsize + sum(b for _, b in
                                                                     PER_BOX.values())
    return len(features) * max_boxes * per_box


def load_feature_table(features, max_boxes: int, device, chunk: int = 4096) -> Dict:
    """{name: (images, max_boxes, ...) tensor on ``device``} of every image, in store order."""
    device = torch.device(device)
    first = features.gather([0], max_boxes=max_boxes)
    table = {k: torch.empty((len(features),) + tuple(v.shape[1:]), dtype=v.dtype, device=device)
             for k, v in first.items() if k in PER_BOX or k == "features"}
    for start in range(0, len(features), chunk):
        stop = min(len(features), start + chunk)
        part = features.gather(np.arange(start, stop), max_boxes=max_boxes,
                               pin_memory=device.type == "cuda")
        for k, v in table.items():
            v[start:stop].copy_(part[k], non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return table


def decide(mode: str, features, max_boxes: int, device) -> Tuple[bool, str]:
    """(load the table?, the reason, for the run's log)."""
    if mode not in MODES:
        raise ValueError(f"--features_on_device={mode!r} is not one of {MODES}")
    need = table_bytes(features, max_boxes)
    size = f"{len(features):,} images x {max_boxes} boxes: {need / 2**30:.1f} GiB"
    device = torch.device(device)
    if mode == "off":
        return False, f"features on the host ({size} table not loaded: --features_on_device off)"
    if device.type != "cuda":
        if mode == "auto":
            return False, f"features on the host (CPU run; the {size} table is for GPUs)"
        return True, f"feature table on the CPU ({size}; --features_on_device on)"
    free, total = torch.cuda.mem_get_info(device)
    fits = need + STEP_RESERVE_BYTES <= free
    if mode == "on" and not fits:
        raise ValueError(f"--features_on_device on: the {size} table and the step's "
                         f"{STEP_RESERVE_BYTES / 2**30:.0f} GiB do not fit the "
                         f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB on {device}")
    if fits:
        return True, (f"feature table on {device} ({size}; {free / 2**30:.1f} GiB were free, "
                      f"{STEP_RESERVE_BYTES / 2**30:.0f} GiB kept for the step)")
    return False, (f"features on the host: the {size} table and {STEP_RESERVE_BYTES / 2**30:.0f}"
                   f" GiB for the step exceed the {free / 2**30:.1f} GiB free on {device}")


def maybe_load(mode: str, features, max_boxes: int, device,
               say=print) -> Optional[Dict[str, torch.Tensor]]:
    """The table when ``decide`` says so (its reason printed), else None."""
    load, reason = decide(mode, features, max_boxes, device)
    say(reason)
    return load_feature_table(features, max_boxes, device) if load else None
