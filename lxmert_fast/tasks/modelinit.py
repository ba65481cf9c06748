"""Building the fine-tuning model of a task: from scratch, from a pretrained checkpoint
(transformers-format directory, ours or a converted original, or the original repository's
``*_LXRT.pth``) with the QA head transferred by answer string, or from a fine-tuned directory of
the same task (``--eval_only``, continuing).

As the original (``src/tasks/vqa_model.py``): VQA/GQA use the answer head
768 -> 1536 -> GeLU -> LN -> num_answers (``LxmertForQuestionAnswering``, ``config.qa_loss``),
NLVR2 the pair head (``LxmertForNLVR2``); the encoder comes from pretraining, heads start fresh
unless the pretraining QA head has the answer. Weights load through ``from_pretrained``'s path
(``lxmert_fast.modeling_loading``): the same key mapping, checks and report.
"""
import json
import os
from typing import Callable, Optional, Sequence

import torch

from lxmert_fast import LxmertConfig, LxmertForNLVR2, LxmertForQuestionAnswering
from lxmert_fast import modeling_loading

from lxmert_fast.data.answers import AnswerTable, convert_ans

from .head_transfer import (ENCODER_PREFIX, HeadTransferError, take_answer_head,
                            transfer_answer_rows)

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


def _init_from(model, path: str, answers, src_index, unmatched: str) -> dict:
    """Load ``path`` (a directory or an original .pth) into the fresh task model through
    from_pretrained's path: the encoder must be complete; the pretraining heads are dropped;
    the QA head's first layers load and its classifier takes rows by answer string when
    ``answers`` and ``src_index`` are given, else the head stays fresh."""
    state = modeling_loading.normalize_keys(model, modeling_loading.read_weights(path))
    transfer = hasattr(model, "answer_head") and answers is not None and src_index is not None
    classifier = take_answer_head(state, transfer)
    load = modeling_loading.load_into(model, state, path)
    encoder = [k for k in sorted(load["missing_keys"]) if k.startswith(ENCODER_PREFIX)]
    if encoder:
        raise HeadTransferError(f"{path}: pretrained weights lack {encoder[0]!r} "
                                f"({len(encoder)} encoder tensors missing)")
    info = {"encoder_tensors": sum(k.startswith(ENCODER_PREFIX) for k in state),
            "answers_loaded": 0, "answers_fresh": len(answers or []), "head": "fresh"}
    if classifier is None:
        return info
    last = model.answer_head.logit_fc[-1]
    weight, bias, matched = transfer_answer_rows(*classifier, src_index, last.weight, last.bias,
                                                 answers, unmatched)
    with torch.no_grad():
        last.weight.copy_(weight)
        last.bias.copy_(bias)
    info.update(head="transferred", answers_loaded=len(matched),
                answers_fresh=len(answers) - len(matched))
    return info


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
        model = cls.from_pretrained(from_pretrained, strict=True, dtype=torch.float32,
                                    **overrides)
        if num is not None and model.config.num_qa_labels != num:
            raise ValueError(f"{from_pretrained} has {model.config.num_qa_labels} answers, the "
                             f"answer table has {num}")
        model.train()
        return model, {"init": "task_checkpoint", "path": from_pretrained}
    if from_pretrained and os.path.isdir(from_pretrained):
        config = LxmertConfig.from_pretrained(from_pretrained)
    elif from_pretrained and not os.path.isfile(from_pretrained):
        raise FileNotFoundError(f"--from_pretrained {from_pretrained}: no such directory or file")
    model = cls(_task_config(config, task, num, qa_loss))
    if not from_pretrained:
        return model, {"init": "scratch"}
    table = pretrain_answers or (find_answer_table(from_pretrained)
                                 if os.path.isdir(from_pretrained) else None)
    src_index = pretrain_answer_index(table) if table else None
    info = _init_from(model, from_pretrained, None if task == "nlvr2" else answers, src_index,
                      unmatched)
    info.update(init="pretrained", path=from_pretrained, answer_table=table)
    return model, info
