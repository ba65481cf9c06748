"""Held-out evaluation of the pretraining tasks (LXMERT's pretraining validation).

Accuracies over the held-out examples (sharded over ranks, counts all-reduced): masked-LM
accuracy over masked tokens, cross-modality matching accuracy, QA accuracy over matched QA
examples (argmax vs the example's answer label); plus the mean held-out loss per task. Each
comes with the accuracy of the constant-prediction baseline on the same examples (the most frequent label: "chance"),
so "above chance" is measured, not assumed. The held-out dataset draws its masking from
(seed, index) alone, so every evaluation sees the same corrupted examples, and no RNG of the
training state is consumed (dropout is off in eval mode).
"""
import torch

from . import env
from .engine import engine_dtype, to_device
from .sampler import eval_shards

LOSS_KEYS = ("mlm", "matched", "obj", "attr", "feat", "qa")


def _label_counts(labels: torch.Tensor, valid: torch.Tensor, size: int):
    sel = valid & (labels >= 0)
    return torch.bincount(labels[sel].cpu(), minlength=size).double(), sel


@torch.no_grad()
def evaluate_pretraining(engine, dataset, batch_size: int, max_examples: int = None) -> dict:
    config = engine.module.config
    n = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    device, dtype = engine.device, engine_dtype(engine)
    sizes = {"mlm": config.vocab_size, "matched": 2, "qa": config.num_qa_labels}
    correct = {k: torch.zeros((), dtype=torch.float64) for k in sizes}
    counts = {k: torch.zeros(size, dtype=torch.float64) for k, size in sizes.items()}
    loss_sums = torch.zeros(2, len(LOSS_KEYS), dtype=torch.float64)  # (sum, batches) per task
    for indices, valid in eval_shards(n, batch_size, env.world_size(), env.rank()):
        batch = to_device(dataset.make_batch(indices), device, dtype)
        out = engine(**batch)
        row_valid = torch.tensor(valid, device=device)
        preds = {"mlm": (out.prediction_logits, batch["labels"], row_valid[:, None]),
                 "matched": (out.cross_relationship_score, batch["matched_label"], row_valid),
                 "qa": (out.question_answering_score, batch["ans"], row_valid)}
        for key, (logits, labels, ok) in preds.items():
            if labels is None:
                continue
            c, sel = _label_counts(labels, ok.expand_as(labels), sizes[key])
            counts[key] += c
            correct[key] += (logits.argmax(-1)[sel] == labels[sel]).sum().double().cpu()
        for i, key in enumerate(LOSS_KEYS):
            value = float(out.losses[key]) if key in out.losses else float("nan")
            if value == value:
                loss_sums[:, i] += torch.tensor([value, 1.0], dtype=torch.float64)
    return _summarise(correct, counts, loss_sums)


def _summarise(correct, counts, loss_sums) -> dict:
    results = {}
    for key in correct:
        total = env.all_reduce_sum(counts[key])
        right = env.all_reduce_sum(correct[key].reshape(1))
        n = total.sum().item()
        if n:
            results[f"{key}_acc"] = right.item() / n
            results[f"{key}_chance"] = total.max().item() / n
    sums = env.all_reduce_sum(loss_sums)
    for i, key in enumerate(LOSS_KEYS):
        if sums[1, i] > 0:
            results[f"loss_{key}"] = (sums[0, i] / sums[1, i]).item()
    return results
