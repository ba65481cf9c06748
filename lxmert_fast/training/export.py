"""Export a DeepSpeed checkpoint of a run to a transformers-format directory.

    python -m lxmert_fast.training.export OUTPUT_DIR EXPORT_DIR [--tag step_00000100]

Reads `OUTPUT_DIR/run.json` (model class and config written by train.py / finetune.py),
consolidates the fp32 weights of any ZeRO stage with DeepSpeed's zero_to_fp32
(`get_fp32_state_dict_from_zero_checkpoint`: ZeRO-1/2 master-weight partitions, ZeRO-3 parameter
partitions; a stage-0 checkpoint's module state is used as is, upcast to fp32), loads them into
the model class and writes `save_pretrained` (config.json + model.safetensors), plus the run's
answer tables (`ANSWER_FILES`: pretraining's answer_table.json, fine-tuning's ans2label.json /
label2ans.json, whichever the run dir holds) and vocab so the directory is self-contained. Runs on
CPU, no process group. The checkpoint is first verified against its manifest as a resume does
(checkpoint_select.py): a damaged `--tag` is an error naming the file, a damaged `latest` falls
back to the newest checkpoint that verifies, with a note on stderr.
"""
import argparse
import glob
import json
import os
import shutil
import sys

import torch

from .checkpoint import Checkpointer
from .checkpoint_select import choose, step_dirs

# Answer tables a run keeps in its output dir: pretraining's QA head (lxmert_fast.data.pretrain
# AnswerTable) and a VQA/GQA fine-tuning's label tables (lxmert_fast.tasks.answers).
ANSWER_FILES = ("answer_table.json", "ans2label.json", "label2ans.json")


def _stage0_state_dict(tag_dir: str) -> dict:
    files = sorted(glob.glob(os.path.join(tag_dir, "mp_rank_*_model_states.pt")))
    if not files:
        raise FileNotFoundError(f"{tag_dir} holds no DeepSpeed model states "
                                f"(mp_rank_*_model_states.pt)")
    # weights_only: an exported checkpoint may come from elsewhere; DeepSpeed's stage-0 model
    # states are tensors and plain data (no global to allow)
    module = torch.load(files[0], map_location="cpu", weights_only=True)["module"]
    return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}


def verified_tag(output_dir: str, tag: str = None) -> str:
    """The checkpoint to export, verified against its manifest like a resume does: `tag`, or
    `latest` with a fallback to the newest checkpoint that verifies (notes on stderr). This
    process checks every file and enters no collective: an export runs on one rank of a run
    (finetune.py's final model) while the other ranks wait in a barrier."""
    ckpt_dir = Checkpointer(output_dir).dir
    if tag is not None and not os.path.isdir(os.path.join(ckpt_dir, tag)):
        raise FileNotFoundError(f"checkpoint {tag!r} not found in {ckpt_dir}: have "
                                f"{step_dirs(ckpt_dir)}")
    choice = choose(ckpt_dir, tag, collective=False)
    for note in choice.notes:
        print(f"export: {note}", file=sys.stderr)
    if choice.tag is None:
        raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir} (no 'latest' file)")
    return choice.tag


def consolidated_state_dict(output_dir: str, tag: str = None) -> dict:
    """fp32 state_dict of checkpoint `tag` (default: `latest`) of a run, any ZeRO stage."""
    tag = verified_tag(output_dir, tag)
    ckpt_dir = Checkpointer(output_dir).dir
    tag_dir = os.path.join(ckpt_dir, tag)
    if not glob.glob(os.path.join(tag_dir, "*optim_states.pt")):
        return _stage0_state_dict(tag_dir)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)


def load_run_model(output_dir: str, tag: str = None):
    """The run's model class instantiated from run.json, with the checkpoint's fp32 weights."""
    import lxmert_fast
    from lxmert_fast import LxmertConfig

    path = os.path.join(output_dir, "run.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {output_dir} a train.py/finetune.py run?")
    with open(path) as f:
        info = json.load(f)
    cls = getattr(lxmert_fast, info["model_class"])
    model = cls(LxmertConfig.from_dict(info["model_config"]))
    state = consolidated_state_dict(output_dir, tag)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"cls.predictions.decoder.weight"} if getattr(model.config, "tie_word_embeddings",
                                                          False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint of {output_dir} does not fit {info['model_class']}: "
                           f"missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")
    model.tie_weights()
    return model, info


def run_vocab(info: dict):
    """The vocab.txt a run used: train.py records it as run.json's "vocab", finetune.py in its
    "data" sources."""
    data = info.get("data")
    return info.get("vocab") or (data.get("vocab") if isinstance(data, dict) else None)


def copy_answer_tables(output_dir: str, export_dir: str) -> list:
    """Copy the run's answer tables (those of `ANSWER_FILES` it holds) into `export_dir`;
    returns the names copied."""
    copied = []
    for name in ANSWER_FILES:
        src = os.path.join(output_dir, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(export_dir, name))
            copied.append(name)
    return copied


def export(output_dir: str, export_dir: str, tag: str = None) -> str:
    model, info = load_run_model(output_dir, tag)
    model.save_pretrained(export_dir)
    copy_answer_tables(output_dir, export_dir)
    vocab = run_vocab(info)
    if vocab and os.path.exists(vocab):
        shutil.copyfile(vocab, os.path.join(export_dir, "vocab.txt"))
    return export_dir


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="DeepSpeed checkpoint -> transformers-format dir")
    p.add_argument("output_dir", help="the run's --output_dir")
    p.add_argument("export_dir", help="directory to write config.json + weights into")
    p.add_argument("--tag", help="checkpoint tag (default: the one in 'latest')")
    args = p.parse_args(argv)
    try:
        out = export(args.output_dir, args.export_dir, args.tag)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        sys.exit(f"export failed: {e}")
    print(f"exported {args.output_dir} ({args.tag or 'latest'}) to {out}")


if __name__ == "__main__":
    main()
