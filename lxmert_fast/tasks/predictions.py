"""Prediction files in the formats the public leaderboards take (as the original's
``dump_result`` methods write them):

- VQA 2.0 (EvalAI): a JSON list of ``{"answer": str, "question_id": int}``.
- GQA: a JSON list of ``{"prediction": str, "questionId": str}``.
- NLVR2: CSV lines ``identifier,prediction`` with prediction ``True`` or ``False``, no header.

Writers are atomic (temporary file + rename); readers validate and return ``{id: prediction}``
(NLVR2 predictions as 0/1), so every file round-trips.
"""
import json
import os
from typing import Dict, Iterable, Tuple, Union

PREDICTION_FILES = {"vqa": "vqa_predictions.json", "gqa": "gqa_predictions.json",
                    "nlvr2": "nlvr2_predictions.csv"}
_JSON_KEYS = {"vqa": ("question_id", "answer"), "gqa": ("questionId", "prediction")}


class PredictionFileError(ValueError):
    """A malformed prediction file; the message names the file, entry and field."""


def _atomic_write(path: str, text: str):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def _nlvr2_text(label: Union[int, bool]) -> str:
    if isinstance(label, str) or int(label) not in (0, 1):
        raise PredictionFileError(f"NLVR2 prediction {label!r} must be 0/1 or a bool")
    return "True" if int(label) == 1 else "False"


def write_predictions(task: str, path: str, items: Iterable[Tuple]) -> str:
    """Write ``(id, prediction)`` pairs in ``task``'s format; ids must be unique.

    VQA/GQA ids are question ids (kept as their JSON type), predictions answer strings;
    NLVR2 ids are ``identifier`` strings, predictions 0/1 (1 = True)."""
    items = list(items)
    ids = [i for i, _ in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PredictionFileError(f"{path}: duplicate id {dup!r} among {len(ids)} predictions")
    if task == "nlvr2":
        for ident, _ in items:
            if not isinstance(ident, str) or any(c in ident for c in ",\r\n"):
                raise PredictionFileError(f"{path}: NLVR2 identifier {ident!r} is not a string "
                                          "free of commas and newlines")
        text = "".join(f"{ident},{_nlvr2_text(pred)}\n" for ident, pred in items)
    elif task in _JSON_KEYS:
        id_key, pred_key = _JSON_KEYS[task]
        for qid, pred in items:
            if not isinstance(pred, str):
                raise PredictionFileError(f"{path}: {id_key} {qid!r}: prediction {pred!r} "
                                          "is not an answer string")
        rows = [{id_key: qid, pred_key: pred} for qid, pred in items]
        text = json.dumps(rows, indent=4, sort_keys=True)
    else:
        raise ValueError(f"unknown task {task!r}; expected 'vqa', 'gqa' or 'nlvr2'")
    _atomic_write(path, text)
    return path


def _read_json(task: str, path: str) -> Dict:
    id_key, pred_key = _JSON_KEYS[task]
    with open(path, encoding="utf-8") as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as err:
            raise PredictionFileError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(rows, list):
        raise PredictionFileError(f"{path}: expected a JSON list, got {type(rows).__name__}")
    out = {}
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != {id_key, pred_key}:
            raise PredictionFileError(f"{path}: entry {n} is {row!r}, expected exactly the keys "
                                      f"{id_key!r} and {pred_key!r}")
        if not isinstance(row[pred_key], str):
            raise PredictionFileError(f"{path}: entry {n}: {pred_key} {row[pred_key]!r} "
                                      "is not a string")
        if row[id_key] in out:
            raise PredictionFileError(f"{path}: entry {n}: duplicate {id_key} {row[id_key]!r}")
        out[row[id_key]] = row[pred_key]
    return out


def _read_csv(path: str) -> Dict[str, int]:
    out = {}
    with open(path, encoding="utf-8", newline="") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            parts = line.split(",")
            if len(parts) != 2 or not parts[0] or parts[1] not in ("True", "False"):
                raise PredictionFileError(f"{path}: line {n} is {line!r}, expected "
                                          "'identifier,True' or 'identifier,False'")
            if parts[0] in out:
                raise PredictionFileError(f"{path}: line {n}: duplicate identifier {parts[0]!r}")
            out[parts[0]] = 1 if parts[1] == "True" else 0
    return out


def read_predictions(task: str, path: str) -> Dict:
    """``{id: prediction}`` from a file written by ``write_predictions`` (or a leaderboard's)."""
    if task == "nlvr2":
        return _read_csv(path)
    if task in _JSON_KEYS:
        return _read_json(task, path)
    raise ValueError(f"unknown task {task!r}; expected 'vqa', 'gqa' or 'nlvr2'")
