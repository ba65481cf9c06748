"""The training step as train.py and finetune.py run it (issue 13): static shapes and no host
synchronisation from the data loader to the loss row, so it can be compiled and graph-captured.

Host side (DataLoader workers, `*Batches`): everything that needs to look at the labels is done
on the CPU tensors the batch is built from, where reading them costs no device sync: the MLM
gather positions (`heads.mlm_gather_index`: every masked token, padded to a capacity bucket), and
whether the micro-batch has MLM / QA labels at all (`present`, a 0/1 tensor per task). With
compilation on, fine-tuning text is padded to `max_seq_len` (pretraining text always is, and
objects are always padded to `max_boxes` by the feature store's gather).
Device side (`*_forward`): one model call; the per-task losses and `present` stay on the device
(loop.micro_step stacks them into the loss row, read only when the loop logs).
A batch is {"model": model kwargs, "present": {task: 0-d tensor}}; a pretraining batch also has
"visual", the packed visual half (lxmert_fast.data.batch: float16 features or, with the feature
table on the device, image indices), which the forward unpacks on the device.
"""
import torch

from lxmert_fast.data.batch import unpack_visual
from lxmert_fast.heads import mlm_gather_index
from lxmert_fast.modeling_losses import pretraining_total

from .engine import engine_dtype

PAD_TEXT = {"input_ids": 0, "token_type_ids": 0, "attention_mask": 0}


def _flag(labels: torch.Tensor) -> torch.Tensor:
    """1.0 if any label is real (>= 0; -100 is ignored), as a CPU tensor (moved with the batch)."""
    return torch.tensor(1.0 if bool((labels >= 0).any()) else 0.0)


def prepare_pretrain(batch: dict) -> dict:
    """A packed pretraining batch (data.pretrain.make_packed) -> the step's batch: MLM gather
    positions (the head runs on the masked tokens only, static capacity), the task presence
    flags, and the packed visual half apart."""
    visual = batch.pop("visual")
    norm, norm_present = batch.pop("loss_norm", None), batch.pop("loss_present", None)
    present = {}
    if batch.get("labels") is not None:
        batch["mlm_positions"] = mlm_gather_index(batch["labels"])
        present["mlm"] = _flag(batch["labels"])
    if batch.get("ans") is not None:
        present["qa"] = _flag(batch["ans"])
    out = {"model": batch, "visual": visual, "present": present}
    if norm is not None:       # a share of the global-batch mean: every micro-batch counts
        out["loss_norm"] = norm
        present.update(norm_present)
    return out


class PretrainBatches:
    """MicroBatch -> step batch, around training.pretrain.make_batch_fn (DataLoader workers)."""

    def __init__(self, make_batch):
        self.make_batch = make_batch

    def __call__(self, mb) -> dict:
        return prepare_pretrain(self.make_batch(mb))


class PretrainForward:
    """(engine, batch) -> (total loss, {task: loss}, {task: present}), all on the device: the
    visual half unpacked (corruption, cast, regression target) with ``table``, the device
    feature table when batches carry image indices. A task whose labels are all ignored in this
    micro-batch contributes 0 to the total and has present 0."""

    def __init__(self, table=None):
        self.table = table

    def __call__(self, engine, batch: dict):
        model = dict(batch["model"])
        model.update(unpack_visual(batch["visual"], engine_dtype(engine), table=self.table))
        out = engine(**model)
        norm = batch.get("loss_norm")
        if not norm:
            return out.loss, out.losses, batch["present"]
        losses = dict(out.losses)
        for task, scale in norm.items():          # micro-batch mean -> share of global mean
            if task in losses:
                wide = torch.promote_types(losses[task].dtype, torch.float32)
                losses[task] = losses[task].to(wide) * scale.to(wide)
        return pretraining_total(losses, out.loss.device), losses, batch["present"]


pretrain_forward = PretrainForward()


def pad_text(batch: dict, length: int) -> dict:
    """Pad (B, L) text tensors to (B, length) (padding is masked: outputs are unchanged)."""
    current = batch["input_ids"].shape[1]
    if current > length:
        raise ValueError(f"pad_text: the batch has {current} tokens, more than max_seq_len="
                         f"{length}")
    if current == length:
        return batch
    for key, value in PAD_TEXT.items():
        if batch.get(key) is not None:
            batch[key] = torch.nn.functional.pad(batch[key], (0, length - current), value=value)
    return batch


class FinetuneBatches:
    """MicroBatch -> step batch for fine-tuning; `max_seq_len` given: text padded to it (static
    shapes for a compiled step; the eager step keeps the batch's longest sentence)."""

    def __init__(self, make_batch, max_seq_len: int = None):
        self.make_batch, self.max_seq_len = make_batch, max_seq_len

    def __call__(self, mb) -> dict:
        batch = self.make_batch(mb)
        if self.max_seq_len is not None:
            batch = pad_text(batch, self.max_seq_len)
        return {"model": batch, "present": {}}


class FinetuneForward:
    """(engine, batch) -> (loss, {task: loss}, {}) for the training loop."""

    def __init__(self, task: str):
        self.task = task

    def __call__(self, engine, batch: dict):
        out = engine(**batch["model"])
        return out.loss, {self.task: out.loss}, {}
