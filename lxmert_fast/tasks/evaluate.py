"""Distributed evaluation: each rank predicts a disjoint contiguous shard of the split
(``lxmert_fast.training.sampler.eval_shards``: equal batch counts on every rank, padding entries
dropped, so no example is counted twice), scores it, and the (score, count) sums are
all-reduced; predictions are all-gathered so rank 0 writes the full prediction file. The
accuracy over N ranks therefore equals the one-rank accuracy (the original evaluates on one GPU).
"""
import json
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist

from lxmert_fast.training.sampler import eval_shards

from .dataset import TaskDataset
from .metrics import ScoreSum, example_score, metrics_dict
from .predictions import PREDICTION_FILES, write_predictions


def dist_info(group=None):
    """(rank, world_size) of ``group``; (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def logits_of(task: str, output) -> torch.Tensor:
    """The classification scores of a model output (QA: question_answering_score; NLVR2: logits)."""
    name = "logits" if task == "nlvr2" else "question_answering_score"
    value = output[name] if isinstance(output, dict) else getattr(output, name, None)
    if value is None:
        raise AttributeError(f"{task}: the model output has no {name!r}")
    return value


def _to_model(batch: Dict, device, dtype) -> Dict:
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device)
            if value.is_floating_point() and key != "labels":
                value = value.to(dtype)
        out[key] = value
    return out


@torch.no_grad()
def predict(model, dataset: TaskDataset, batches: Iterable[Sequence[int]], device=None,
            dtype=None, image_map=None) -> List[int]:
    """Argmax class of each example of ``batches`` (lists of indices; no labels needed);
    ``image_map``: shown other images (``TaskDataset.image_derangement``)."""
    param = next(iter(model.parameters()))
    device = device or param.device
    dtype = dtype or (param.dtype if param.is_floating_point() else torch.float32)
    was_training = model.training
    model.eval()
    out: List[int] = []
    try:
        for chunk in batches:
            batch = _to_model(dataset.make_batch(list(chunk), with_labels=False,
                                                 image_map=image_map), device, dtype)
            out.extend(logits_of(dataset.task, model(**batch)).argmax(dim=-1).tolist())
    finally:
        model.train(was_training)
    return out


def _local_predictions(model, dataset, batch_size, rank, world, device, dtype, image_map=None):
    """This rank's (indices, predicted classes). Every rank runs the same number of batches
    (ZeRO-3 gathers parameters collectively inside forward); padding entries are dropped."""
    if batch_size < 1:
        raise ValueError(f"eval batch_size={batch_size} must be >= 1")
    shards = list(eval_shards(len(dataset), batch_size, world, rank))
    preds = predict(model, dataset, [idx for idx, _ in shards], device, dtype, image_map)
    flat = [(i, ok) for idx, valid in shards for i, ok in zip(idx, valid)]
    keep = [(i, p) for (i, ok), p in zip(flat, preds) if ok]
    return [i for i, _ in keep], [p for _, p in keep]


@dataclass
class EvalResult:
    """Metrics over every rank; ``items`` (record id, file id, prediction) in dataset order."""
    metrics: Dict
    items: List = field(default_factory=list)

    @property
    def accuracy(self) -> Optional[float]:
        return self.metrics["accuracy"]


def _score(dataset, indices, local, group) -> ScoreSum:
    total = ScoreSum()
    for (_, _, pred), i in zip(local, indices):
        rec = dataset.records[i]
        if rec.label is not None:
            total.add(example_score(dataset.task, rec, pred))
    return total.all_reduce(group)


def shuffled_image_accuracy(model, dataset: TaskDataset, batch_size: int = 64, device=None,
                            dtype=None, group=None, seed: int = 0) -> Optional[float]:
    """The accuracy with every image replaced by another image of the split (a fixed
    derangement; same sentences and labels): the image-dependence control. A model that
    ignores the images scores the same as on its own images."""
    rank, world = dist_info(group)
    indices, preds = _local_predictions(model, dataset, batch_size, rank, world, device, dtype,
                                        dataset.image_derangement(seed))
    return _score(dataset, indices, dataset.prediction_items(indices, preds), group).accuracy


def evaluate(model, dataset: TaskDataset, split: str = "valid", batch_size: int = 64,
             device=None, dtype=None, group=None, control: bool = False) -> EvalResult:
    """Predict and score ``dataset`` across the ranks of ``group`` (every rank gets the result);
    ``control``: also ``accuracy_shuffled_images`` (``shuffled_image_accuracy``) in the metrics."""
    rank, world = dist_info(group)
    indices, preds = _local_predictions(model, dataset, batch_size, rank, world, device, dtype)
    local = dataset.prediction_items(indices, preds)
    total = _score(dataset, indices, local, group)
    if world > 1:
        shards: List = [None] * world
        dist.all_gather_object(shards, [(i, item) for i, item in zip(indices, local)], group=group)
        merged = sorted((pair for shard in shards for pair in shard), key=lambda p: p[0])
        items = [item for _, item in merged]
    else:
        items = local
    if len(items) != len(dataset):
        raise RuntimeError(f"evaluation gathered {len(items)} predictions for {len(dataset)} "
                           f"examples over {world} ranks")
    metrics = metrics_dict(dataset.task, split, total, len(items))
    if control and total.count:
        metrics["accuracy_shuffled_images"] = shuffled_image_accuracy(
            model, dataset, batch_size, device, dtype, group)
    return EvalResult(metrics, items)


def write_outputs(result: EvalResult, task: str, output_dir: str, split: str = "valid",
                  extra: Optional[Dict] = None) -> Dict[str, str]:
    """Write ``<task>_<split>_metrics.json`` and the leaderboard prediction file (call on rank 0)."""
    os.makedirs(output_dir, exist_ok=True)
    pred_name = PREDICTION_FILES[task].replace("_predictions", f"_{split}_predictions")
    pred_path = write_predictions(task, os.path.join(output_dir, pred_name),
                                  [(fid, pred) for _, fid, pred in result.items])
    metrics_path = os.path.join(output_dir, f"{task}_{split}_metrics.json")
    payload = dict(result.metrics, predictions=os.path.basename(pred_path), **(extra or {}))
    tmp = metrics_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, metrics_path)
    return {"metrics": metrics_path, "predictions": pred_path}
