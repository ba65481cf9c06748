"""The three fine-tuning tasks: the original recipe's defaults and loading a task's splits.

Defaults (Tan & Bansal 2019, ``run/*_finetune.bash`` and ``src/tasks/*.py``): batch 32,
4 epochs, BertAdam with 10% warm-up then linear decay, max 20 tokens, 36 boxes; lr 5e-5 for
VQA and NLVR2, 1e-5 for GQA; VQA/GQA BCE on soft scores x num_answers, NLVR2 cross-entropy.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from .answers import AnswerLabels
from .dataset import TaskDataset
from .prepared_records import ensure_task_records
from .records import check_task


@dataclass(frozen=True)
class TaskSpec:
    name: str
    lr: float
    loss: str           # default loss: "bce" (QA) or "ce"
    metric: str
    batch_size: int = 32
    epochs: int = 4
    warmup_ratio: float = 0.1
    max_seq_len: int = 20
    max_boxes: int = 36

    @property
    def is_qa(self) -> bool:
        return self.name in ("vqa", "gqa")


TASKS = {
    "vqa": TaskSpec("vqa", lr=5e-5, loss="bce", metric="vqa_soft_accuracy"),
    "gqa": TaskSpec("gqa", lr=1e-5, loss="bce", metric="exact_match"),
    "nlvr2": TaskSpec("nlvr2", lr=5e-5, loss="ce", metric="accuracy"),
}


def get_spec(task: str) -> TaskSpec:
    return TASKS[check_task(task)]


@dataclass
class TaskData:
    """What a fine-tuning run needs from disk: datasets, answer table, where they came from."""
    train: Optional[TaskDataset]
    valid: TaskDataset
    answers: Optional[AnswerLabels]
    sources: dict


def load_task_data(task: str, train_paths: Optional[Sequence[str]], valid_paths: Sequence[str],
                   features, tokenizer, ans2label: Optional[str] = None,
                   label2ans: Optional[str] = None, loss: Optional[str] = None,
                   max_seq_len: int = 20, max_boxes: int = 36) -> TaskData:
    """Datasets of ``task`` (no train split when only evaluating)."""
    spec = get_spec(task)
    answers = None
    if spec.is_qa:
        if ans2label is None:
            raise ValueError(f"task {task!r} needs --ans2label (the answer table json)")
        answers = AnswerLabels.load(ans2label, label2ans)
    if not valid_paths:
        raise ValueError(f"task {task!r}: no evaluation records given")
    kw = dict(features=features, tokenizer=tokenizer, answers=answers,
              max_seq_len=max_seq_len, max_boxes=max_boxes, loss=loss or spec.loss)
    def split(paths):      # prepared once (cached, memory-mapped): no Python record per question
        return ensure_task_records(task, list(paths), tokenizer, max_seq_len)

    train = TaskDataset(task, split(train_paths), **kw) if train_paths else None
    valid = TaskDataset(task, split(valid_paths), **kw)
    return TaskData(train, valid, answers, {"train": list(train_paths or []),
                                            "valid": list(valid_paths),
                                            "ans2label": ans2label})


def world_paths(world, task: str) -> Tuple[list, list, Optional[str], Optional[str]]:
    """(train, valid, ans2label, label2ans) paths of ``task`` in a synthetic World."""
    check_task(task)
    tables = (getattr(world, f"{task}_ans2label"), getattr(world, f"{task}_label2ans")) \
        if task != "nlvr2" else (None, None)
    return [world.splits[f"{task}_train"]], [world.splits[f"{task}_valid"]], *tables
