"""The pretraining QA answer table with the original LXMERT answer normalisation.

Reproduces src/pretrain/qa_answer_table.py of the original repository: ``convert_ans``
lowercases, drops one trailing '.', strips one leading article ("a ", "an ", "the ", in that
order of checks) and maps a few answers (number words to digits, "grey" -> "gray", "a man" ->
"man" ...). The original read its 9500 answers from data/lxmert/all_ans.json (answers of the QA
sets with enough occurrences); here ``AnswerTable.build`` makes the table from the records'
``labelf`` (normalised answers of the chosen QA sources occurring at least ``min_count`` times,
most frequent first, at most ``max_answers``), and ``save``/``load`` keep it with the run.
``prune_label`` is the original LXMERTDataset's label rewrite: answers are normalised and those
outside the table dropped.
"""
import json
import os
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence

ANS_CONVERT = {
    "a man": "man", "the man": "man", "a woman": "woman", "the woman": "woman",
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "grey": "gray",
}


def convert_ans(ans: str) -> str:
    """The original's answer normalisation (qa_answer_table.AnswerTable.convert_ans)."""
    if len(ans) == 0:
        return ""
    ans = ans.lower()
    if ans[-1] == ".":
        ans = ans[:-1].strip()
    if ans.startswith("a "):
        ans = ans[2:].strip()
    if ans.startswith("an "):
        ans = ans[3:].strip()
    if ans.startswith("the "):
        ans = ans[4:].strip()
    return ANS_CONVERT.get(ans, ans)


class AnswerTable:
    """Answers <-> ids for the pretraining QA head (ids in table order)."""
    FORMAT = "lxmert_fast.answer_table"

    def __init__(self, answers: Sequence[str]):
        self._id2ans: List[str] = list(answers)
        self._ans2id: Dict[str, int] = {a: i for i, a in enumerate(self._id2ans)}
        if len(self._ans2id) != len(self._id2ans):
            dup = [a for a, c in Counter(self._id2ans).items() if c > 1]
            raise ValueError(f"answer table has duplicate answers: {dup[:5]}")

    @classmethod
    def build(cls, records: Iterable[Dict], qa_sets: Optional[Iterable[str]] = None,
              min_count: int = 1, max_answers: int = 9500) -> "AnswerTable":
        """Table over the normalised answers of ``records[*]["labelf"]`` (sources ``qa_sets``)."""
        wanted = None if qa_sets is None else {s.lower().strip() for s in qa_sets}
        counts: Counter = Counter()
        converted: Dict[str, str] = {}           # answers repeat: normalise each once
        for rec in records:
            for source, labels in rec.get("labelf", {}).items():
                if wanted is not None and source not in wanted:
                    continue
                for label in labels:
                    for a in label:
                        if a not in converted:
                            converted[a] = convert_ans(a)
                    counts.update({converted[a] for a in label if converted[a]})
        kept = [a for a, c in counts.items() if c >= min_count]
        kept.sort(key=lambda a: (-counts[a], a))
        return cls(kept[:max_answers])

    def __len__(self) -> int:
        return len(self._id2ans)

    @property
    def num_answers(self) -> int:
        return len(self._id2ans)

    def used(self, ans: str) -> bool:
        return ans in self._ans2id

    def ans2id(self, ans: str) -> int:
        try:
            return self._ans2id[ans]
        except KeyError:
            raise KeyError(f"answer {ans!r} is not in the answer table ({len(self)} answers)") from None

    def id2ans(self, ans_id: int) -> str:
        if not 0 <= int(ans_id) < len(self._id2ans):
            raise IndexError(f"answer id {ans_id} out of range [0, {len(self._id2ans)})")
        return self._id2ans[int(ans_id)]

    def all_answers(self) -> List[str]:
        return list(self._id2ans)

    def prune_label(self, label: Dict[str, float],
                    converted: Optional[Dict[str, str]] = None) -> Dict[str, float]:
        """Normalise a label's answers and drop those outside the table (original semantics);
        ``converted``: a dict that memoises the normalisation across calls (answers repeat)."""
        out = dict(label)
        for ans in list(out.keys()):        # in place, key by key, exactly as the original
            if converted is None:
                new = convert_ans(ans)
            else:
                new = converted.get(ans)
                if new is None:
                    new = converted[ans] = convert_ans(ans)
            if self.used(new):
                if ans != new:
                    out[new] = out.pop(ans)
            else:
                out.pop(ans)
        return out

    def save(self, path: str) -> str:
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"format": self.FORMAT, "answers": self._id2ans}, f)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> "AnswerTable":
        with open(path) as f:
            obj = json.load(f)
        if isinstance(obj, list):          # a plain label2ans list
            return cls(obj)
        if not isinstance(obj, dict) or "answers" not in obj:
            raise ValueError(f"{path}: not an answer table (expected a list or {{'answers': [...]}})")
        return cls(obj["answers"])
