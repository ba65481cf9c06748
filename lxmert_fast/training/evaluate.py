"""Held-out evaluation of the pretraining tasks (LXMERT's pretraining validation), with the
image-dependence control.

Accuracies over the held-out examples (sharded over ranks, counts all-reduced): masked-LM
accuracy over masked tokens (all examples, as LXMERT's MLM), the same over the masked tokens
that are visually grounded words (the dataset's ``grounded_ids``: object classes, colours,
counts ...) of the matched examples only (``mlm_grounded``: a word of a sentence paired with
another image is not determined by the image it is shown with, so the mismatched half of the
held-out examples could only dilute the image's share), cross-modality matching accuracy, QA
accuracy over matched QA examples (argmax vs the example's answer label); plus the mean held-out
loss per task. Each accuracy comes with

- ``*_chance``: the constant-prediction baseline on the same examples (the most frequent label),
- ``*_shuffled``: the same accuracy with every example's image replaced by another image of the
  held-out set (a fixed derangement of the images, ``PretrainDataset.image_derangement``): same
  text, same masking, same labels. A model that ignores the image scores the same with both; the
  gap ``acc - acc_shuffled`` is what the model takes from the image (a text prior cannot make
  it). Cf. the image-shuffling ablations of the vision-language pretraining literature.

The held-out dataset draws its masking from (seed, index) alone, so every evaluation sees the
same corrupted examples, and no RNG of the training state is consumed (dropout is off in eval).
"""
import torch

from . import env
from .engine import engine_dtype, to_device
from .sampler import eval_shards

LOSS_KEYS = ("mlm", "matched", "obj", "attr", "feat", "qa", "itc")
ACC_KEYS = ("mlm", "mlm_grounded", "matched", "qa")
SHUFFLE_SEED = 0


class _Tally:
    """Per-key correct counts (own and shuffled images) and label histograms."""

    def __init__(self, sizes: dict):
        self.sizes = sizes
        self.correct = {k: torch.zeros(2, dtype=torch.float64) for k in sizes}
        self.counts = {k: torch.zeros(size, dtype=torch.float64) for k, size in sizes.items()}

    def add(self, key: str, variant: int, logits, labels, ok) -> None:
        sel = ok & (labels >= 0)
        if variant == 0:
            self.counts[key] += torch.bincount(labels[sel].cpu(),
                                               minlength=self.sizes[key]).double()
        self.correct[key][variant] += (logits.argmax(-1)[sel] == labels[sel]).sum().double().cpu()


def _predictions(out, batch, row_valid, grounded):
    labels = batch["labels"]
    preds = {"matched": (out.cross_relationship_score, batch["matched_label"], row_valid),
             "qa": (out.question_answering_score, batch["ans"], row_valid)}
    if labels is not None:
        ok = row_valid[:, None].expand_as(labels)
        preds["mlm"] = (out.prediction_logits, labels, ok)
        matched = batch["matched_label"]
        shown_own = ok if matched is None else ok & (matched == 1)[:, None]
        preds["mlm_grounded"] = (out.prediction_logits, labels,
                                 shown_own & torch.isin(labels, grounded))
    return {k: v for k, v in preds.items() if v[1] is not None}


@torch.no_grad()
def evaluate_pretraining(engine, dataset, batch_size: int, max_examples: int = None) -> dict:
    config = engine.module.config
    n = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    device, dtype = engine.device, engine_dtype(engine)
    tally = _Tally({"mlm": config.vocab_size, "mlm_grounded": config.vocab_size, "matched": 2,
                    "qa": config.num_qa_labels})
    grounded = torch.as_tensor(dataset.grounded_ids, device=device)
    perm = dataset.image_derangement(SHUFFLE_SEED)
    loss_sums = torch.zeros(2, len(LOSS_KEYS), dtype=torch.float64)  # (sum, batches) per task
    for indices, valid in eval_shards(n, batch_size, env.world_size(), env.rank()):
        row_valid = torch.tensor(valid, device=device)
        for variant, image_perm in enumerate((None, perm)):
            batch = to_device(dataset.make_batch(indices, image_perm), device, dtype)
            out = engine(**batch)
            for key, (logits, labels, ok) in _predictions(out, batch, row_valid,
                                                          grounded).items():
                tally.add(key, variant, logits, labels, ok)
            if variant == 0:
                _add_losses(loss_sums, out.losses)
    return _summarise(tally, loss_sums)


def _add_losses(loss_sums: torch.Tensor, losses: dict) -> None:
    for i, key in enumerate(LOSS_KEYS):
        value = float(losses[key]) if key in losses else float("nan")
        if value == value:
            loss_sums[:, i] += torch.tensor([value, 1.0], dtype=torch.float64)


def _summarise(tally: _Tally, loss_sums) -> dict:
    results = {}
    for key in ACC_KEYS:
        if key not in tally.correct:
            continue
        total = env.all_reduce_sum(tally.counts[key])
        right = env.all_reduce_sum(tally.correct[key])
        n = total.sum().item()
        if n:
            results[f"{key}_acc"] = right[0].item() / n
            results[f"{key}_acc_shuffled"] = right[1].item() / n
            results[f"{key}_chance"] = total.max().item() / n
            results[f"{key}_count"] = n
    sums = env.all_reduce_sum(loss_sums)
    for i, key in enumerate(LOSS_KEYS):
        if sums[1, i] > 0:
            results[f"loss_{key}"] = (sums[0, i] / sums[1, i]).item()
    return results


def format_results(results: dict) -> str:
    """One console line: ``qa_acc 0.6100 (shuffled images 0.4000, chance 0.3200)`` per task,
    then the held-out losses."""
    parts = []
    for key in ACC_KEYS:
        if f"{key}_acc" in results:
            parts.append(f"{key}_acc {results[f'{key}_acc']:.4f} (shuffled images "
                         f"{results[f'{key}_acc_shuffled']:.4f}, chance "
                         f"{results[f'{key}_chance']:.4f}, n {int(results[f'{key}_count'])})")
    parts += [f"{k} {v:.4f}" for k, v in results.items() if k.startswith("loss_")]
    return "  ".join(parts)
