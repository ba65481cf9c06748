"""Building the fine-tuning model of a task: from scratch, from a pretrained checkpoint
(transformers-format directory, ours or a converted original, or the original repository's
``*_LXRT.pth``) with the QA head transferred by answer string, or from a fine-tuned directory of
the same task (``--eval_only``, continuing).

As the original (``src/tasks/vqa_model.py``): VQA/GQA use the answer head
768 -> 1536 -> GeLU -> LN -> num_answers (``LxmertForQuestionAnswering``, ``config.qa_loss``),
NLVR2 the pair head (``LxmertForNLVR2``); the encoder comes from pretraining, heads start fresh
unless the pretraining QA head has the answer.
"""
import json
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

from lxmert_fast import LxmertConfig, LxmertForNLVR2, LxmertForQuestionAnswering
from lxmert_fast import checkpoint as ckpt

from lxmert_fast.data.answers import AnswerTable, convert_ans

from .head_transfer import init_from_pretrained

ANSWER_TABLE_NAMES = ("answer_table.json", "qa_answers.json", "all_ans.json")


def model_class(task: str):
    return LxmertForNLVR2 if task == "nlvr2" else LxmertForQuestionAnswering


def _task_config(config: LxmertConfig, task: str, num_answers: Optional[int],
                 qa_loss: Optional[str]) -> LxmertConfig:
    cfg = LxmertConfig.from_dict(config.to_dict())
    if task != "nlvr2":
        cfg.num_qa_labels = int(num_answers)
        cfg.qa_loss = qa_loss or "bce"
    return cfg


def pretrain_answer_index(path: str) -> Callable[[str], Optional[int]]:
    """answer -> row of the pretraining QA head, matched as the original's ``load_lxmert_qa``:
    the task answer is normalised (``convert_ans``) and looked up in the pretraining table.
    Reads our saved table (``{"answers": [...]}`` or a list of strings) or the original's
    ``all_ans.json`` (a list of ``{"ans": ...}``)."""
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if isinstance(obj, list) and obj and all(isinstance(a, dict) and "ans" in a for a in obj):
        table = AnswerTable([a["ans"] for a in obj])
    else:
        table = AnswerTable.load(path)

    def index(ans: str) -> Optional[int]:
        key = convert_ans(ans)
        return table.ans2id(key) if table.used(key) else None
    return index


def find_answer_table(directory: str) -> Optional[str]:
    """The pretraining answer table saved beside a checkpoint, if any."""
    for name in ANSWER_TABLE_NAMES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def is_task_checkpoint(path: str, task: str) -> bool:
    """True when ``path`` holds a fine-tuned model of ``task``'s class (config.architectures)."""
    cfg = os.path.join(path, "config.json")
    if not os.path.isdir(path) or not os.path.isfile(cfg):
        return False
    with open(cfg, encoding="utf-8") as f:
        arch = json.load(f).get("architectures") or []
    return model_class(task).__name__ in arch


def _pretrained_state(path: str, model) -> Tuple[Dict, Optional[LxmertConfig]]:
    """(state_dict with our key names, its config or None) of a directory or an original .pth."""
    if os.path.isdir(path):
        return ckpt.adapt_prefix(model, ckpt.read_state_dict(path)), \
            LxmertConfig.from_pretrained(path)
    if os.path.isfile(path):
        import torch
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return ckpt.map_original_keys(model, raw), None
    raise FileNotFoundError(f"--from_pretrained {path}: no such directory or file")


def build_task_model(task: str, config: LxmertConfig, answers: Optional[Sequence[str]] = None,
                     from_pretrained: Optional[str] = None, qa_loss: Optional[str] = None,
                     pretrain_answers: Optional[str] = None, unmatched: str = "fresh"):
    """(model, info). ``config`` gives the architecture when starting from scratch or from an
    original .pth; a directory's own config.json wins otherwise. ``answers`` are the task's
    label2ans (VQA/GQA)."""
    cls = model_class(task)
    num = None if task == "nlvr2" else len(answers)
    if from_pretrained and is_task_checkpoint(from_pretrained, task):
        overrides = {} if qa_loss is None or task == "nlvr2" else {"qa_loss": qa_loss}
        model = cls.from_pretrained(from_pretrained, **overrides)
        if num is not None and model.config.num_qa_labels != num:
            raise ValueError(f"{from_pretrained} has {model.config.num_qa_labels} answers, the "
                             f"answer table has {num}")
        model.train()
        return model, {"init": "task_checkpoint", "path": from_pretrained}
    if from_pretrained and os.path.isdir(from_pretrained):
        config = LxmertConfig.from_pretrained(from_pretrained)
    model = cls(_task_config(config, task, num, qa_loss))
    if not from_pretrained:
        return model, {"init": "scratch"}
    state, _ = _pretrained_state(from_pretrained, model)
    table = pretrain_answers or (find_answer_table(from_pretrained)
                                 if os.path.isdir(from_pretrained) else None)
    src_index = pretrain_answer_index(table) if table else None
    full, info = init_from_pretrained(model.state_dict(), state,
                                      None if task == "nlvr2" else answers, src_index, unmatched)
    ckpt.check_and_load(model, full, strict=True, source=from_pretrained)
    info.update(init="pretrained", path=from_pretrained, answer_table=table)
    return model, info
