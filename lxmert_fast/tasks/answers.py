"""Answer-to-label tables of the original VQA / GQA fine-tuning (``trainval_ans2label.json`` as a
JSON object ``{answer: label}``, ``trainval_label2ans.json`` as a JSON list indexed by label).

Labels are the rows of the QA head (3129 for VQA 2.0, 1842 for GQA in the original). The two
files must agree: labels 0..n-1 each used once, ``label2ans[ans2label[a]] == a``.
"""
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from .records import QARecord


class AnswerTableError(ValueError):
    """The ans2label / label2ans files are inconsistent; the message names the files and entry."""


class AnswerLabels:
    """A fixed answer vocabulary: ``label(answer)``, ``answer(label)``, ``len()``."""

    def __init__(self, label2ans: Sequence[str], source: str = "<answers>"):
        self.source = source
        self.label2ans: List[str] = [str(a) for a in label2ans]
        self.ans2label: Dict[str, int] = {}
        for label, ans in enumerate(self.label2ans):
            if ans in self.ans2label:
                raise AnswerTableError(f"{source}: answer {ans!r} appears at labels "
                                       f"{self.ans2label[ans]} and {label}")
            self.ans2label[ans] = label

    def __len__(self):
        return len(self.label2ans)

    def __contains__(self, answer):
        return answer in self.ans2label

    def label(self, answer: str) -> Optional[int]:
        """The label of ``answer``, or None if the table does not have it."""
        return self.ans2label.get(answer)

    def answer(self, label: int) -> str:
        if not 0 <= label < len(self.label2ans):
            raise IndexError(f"{self.source}: label {label} out of range [0, {len(self)})")
        return self.label2ans[label]

    @classmethod
    def load(cls, ans2label_path: str, label2ans_path: Optional[str] = None) -> "AnswerLabels":
        """Read the original's table pair; ``label2ans_path`` may be omitted."""
        with open(ans2label_path, encoding="utf-8") as f:
            ans2label = json.load(f)
        if not isinstance(ans2label, dict):
            raise AnswerTableError(f"{ans2label_path}: expected a JSON object {{answer: label}}")
        n = len(ans2label)
        label2ans: List[Optional[str]] = [None] * n
        for ans, label in ans2label.items():
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < n:
                raise AnswerTableError(f"{ans2label_path}: answer {ans!r} has label {label!r}, "
                                       f"expected an integer in [0, {n})")
            if label2ans[label] is not None:
                raise AnswerTableError(f"{ans2label_path}: label {label} used by both "
                                       f"{label2ans[label]!r} and {ans!r}")
            label2ans[label] = ans
        table = cls(label2ans, source=ans2label_path)
        if label2ans_path is not None:
            table._check_against(label2ans_path)
        return table

    def _check_against(self, label2ans_path: str):
        with open(label2ans_path, encoding="utf-8") as f:
            other = json.load(f)
        if not isinstance(other, list):
            raise AnswerTableError(f"{label2ans_path}: expected a JSON list of answers")
        if len(other) != len(self):
            raise AnswerTableError(f"{label2ans_path} has {len(other)} answers, "
                                   f"{self.source} has {len(self)}")
        for label, (a, b) in enumerate(zip(self.label2ans, other)):
            if a != b:
                raise AnswerTableError(f"label {label}: {self.source} says {a!r}, "
                                       f"{label2ans_path} says {b!r}")

    def save(self, directory: str, prefix: str = "") -> Dict[str, str]:
        """Write ``<prefix>ans2label.json`` and ``<prefix>label2ans.json``; returns the paths."""
        os.makedirs(directory, exist_ok=True)
        paths = {"ans2label": os.path.join(directory, f"{prefix}ans2label.json"),
                 "label2ans": os.path.join(directory, f"{prefix}label2ans.json")}
        for key, obj in (("ans2label", self.ans2label), ("label2ans", self.label2ans)):
            tmp = paths[key] + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(obj, f)
            os.replace(tmp, paths[key])
        return paths

    def soft_targets(self, records: Iterable[QARecord]) -> torch.Tensor:
        """(N, num_answers) float targets of the original's BCE loss: label scores at the rows
        of known answers; answers outside the table are dropped, as the original's tables are
        built from the answers it trains on."""
        records = list(records)
        target = torch.zeros(len(records), len(self))
        for row, rec in enumerate(records):
            for ans, score in (rec.label or {}).items():
                label = self.ans2label.get(ans)
                if label is not None:
                    target[row, label] = score
        return target

    def hard_targets(self, records: Iterable[QARecord], ignore_index: int = -100) -> torch.Tensor:
        """(N,) long targets for cross-entropy: the highest-scoring known answer (first on
        ties, as ``torch.max``); ``ignore_index`` where no answer of the record is known."""
        soft = self.soft_targets(records)
        best, label = soft.max(dim=1)
        return torch.where(best > 0, label, torch.full_like(label, ignore_index))
