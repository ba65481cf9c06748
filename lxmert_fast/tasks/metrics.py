"""Evaluation metrics of the three LXMERT fine-tuning tasks, summed across ranks.

- VQA: soft accuracy, the official VQA 2.0 score min(1, #humans that gave the answer / 3)
  (averaged over the 10-choose-9 annotator subsets this is 0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 /
  4+ humans), which the original's records carry as label scores: a prediction scores
  ``label.get(answer, 0)`` (``VQAEvaluator.evaluate`` in the original ``src/tasks/vqa_data.py``).
- GQA: exact match of the predicted answer string with the gold answer.
- NLVR2: accuracy of the True/False prediction.

Each rank scores the examples it predicted; ``ScoreSum.all_reduce`` adds the (score, count)
pairs over ``torch.distributed`` so the accuracy over N ranks equals the one-rank accuracy.
"""
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Union

import torch
import torch.distributed as dist

from .records import Record


def vqa_score(answer: str, label: Optional[Mapping[str, float]]) -> float:
    """Soft accuracy of one VQA prediction: the label's score of ``answer`` (0 when absent)."""
    if not label:
        return 0.0
    return float(min(1.0, label.get(answer, 0.0)))


def gqa_score(answer: str, label: Optional[Mapping[str, float]]) -> float:
    """Exact match with the gold answer (the record's single label key)."""
    if not label:
        return 0.0
    gold = max(label, key=label.get)
    return 1.0 if answer == gold else 0.0


def nlvr2_score(prediction: int, label: Optional[int]) -> float:
    return 1.0 if label is not None and int(prediction) == int(label) else 0.0


def example_score(task: str, record: Record, prediction: Union[str, int]) -> float:
    """Score of one prediction (VQA/GQA: an answer string; NLVR2: 0/1)."""
    if task == "vqa":
        return vqa_score(prediction, record.label)
    if task == "gqa":
        return gqa_score(prediction, record.label)
    if task == "nlvr2":
        return nlvr2_score(prediction, record.label)
    raise ValueError(f"unknown task {task!r}; expected 'vqa', 'gqa' or 'nlvr2'")


@dataclass
class ScoreSum:
    """Sum of example scores and number of labelled examples scored (double precision)."""
    score: float = 0.0
    count: int = 0

    def add(self, score: float):
        self.score += float(score)
        self.count += 1

    @property
    def accuracy(self) -> Optional[float]:
        return self.score / self.count if self.count else None

    def all_reduce(self, group=None) -> "ScoreSum":
        """The sum over every rank of ``group`` (a no-op without an initialised process group)."""
        if not (dist.is_available() and dist.is_initialized()):
            return ScoreSum(self.score, self.count)
        buf = torch.tensor([self.score, float(self.count)], dtype=torch.float64)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
        return ScoreSum(float(buf[0]), int(round(float(buf[1]))))


def score_predictions(task: str, records: Sequence[Record],
                      predictions: Mapping) -> ScoreSum:
    """Score ``predictions`` (record id -> answer / 0-1) against labelled ``records``.

    Records without a label (test splits) are not counted; a labelled record without a
    prediction is an error naming its id, so a partial evaluation cannot pass for a full one.
    """
    total = ScoreSum()
    for rec in records:
        if rec.label is None:
            continue
        if rec.qid not in predictions:
            raise KeyError(f"{task}: no prediction for record id {rec.qid!r}")
        total.add(example_score(task, rec, predictions[rec.qid]))
    return total


def metrics_dict(task: str, split: str, total: ScoreSum, num_predictions: int) -> Dict:
    """The metrics JSON written next to the prediction file."""
    name = {"vqa": "vqa_soft_accuracy", "gqa": "exact_match", "nlvr2": "accuracy"}[task]
    return {"task": task, "split": split, "metric": name, "accuracy": total.accuracy,
            "score_sum": total.score, "num_scored": total.count,
            "num_predictions": int(num_predictions)}


__all__ = ["vqa_score", "gqa_score", "nlvr2_score", "example_score", "ScoreSum",
           "score_predictions", "metrics_dict"]
