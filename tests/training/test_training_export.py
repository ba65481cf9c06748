"""export: a run dir (run.json + a checkpoint that the Checkpointer saved from a real
single-process DeepSpeed engine, stage 0) becomes a transformers-format directory carrying the
run's answer tables (pretraining's answer_table.json, fine-tuning's ans2label.json /
label2ans.json) and vocab. The run dirs are laid out as train.py and finetune.py write them.

The runs are made once, by this file run as a script in a child process: DeepSpeed keeps the
process group it first saw, so a second group in the pytest process (other modules start and
destroy their own) would break. Tiny models, no training step: ~10 s for the file. Export from
ZeRO-1/2/3 runs is tested in test_train_runs.py."""
import json
import os
import subprocess
import sys

import pytest
import torch

TINY = dict(vocab_size=30, hidden_size=16, num_attention_heads=2, intermediate_size=32,
            l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=8, num_object_labels=5,
            num_attr_labels=4, max_position_embeddings=12, kernel_impl="torch")
ANSWERS = ["yes", "no", "two"]
PRETRAIN_TABLE = {"answers": ANSWERS}
# run name -> (model class, run.json fields besides the model, answer tables the run dir holds)
RUNS = {
    "vqa": ("LxmertForQuestionAnswering", {"task": "vqa", "data": {"vocab": "VOCAB"}},
            ["ans2label.json", "label2ans.json"]),
    "pretrain": ("LxmertForPreTraining", {"vocab": "VOCAB"}, ["answer_table.json"]),
    "nlvr2": ("LxmertForNLVR2", {"task": "nlvr2", "data": {}}, []),
}


def _make_runs(root: str) -> None:
    """Child process: for each of RUNS a run dir with its answer tables, run.json and one
    checkpoint (step 1) of a fresh model; the model's weights also go to root/<run>.pt."""
    import lxmert_fast
    from lxmert_fast import LxmertConfig
    from lxmert_fast.tasks.answers import AnswerLabels
    from lxmert_fast.training import ds_config as dsc
    from lxmert_fast.training import env
    from lxmert_fast.training.checkpoint import Checkpointer
    from lxmert_fast.training.engine import build_engine

    env.setup_environment()
    env.init_distributed()
    vocab = os.path.join(root, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("".join(f"tok{i}\n" for i in range(TINY["vocab_size"])))
    for name, (cls, info, tables) in RUNS.items():
        run_dir = os.path.join(root, name)
        os.makedirs(run_dir)
        if "ans2label.json" in tables:
            AnswerLabels(ANSWERS).save(run_dir)  # as finetune.py's save_run_info
        if "answer_table.json" in tables:
            with open(os.path.join(run_dir, "answer_table.json"), "w") as f:
                json.dump(PRETRAIN_TABLE, f)
        torch.manual_seed(0)
        config = LxmertConfig(**TINY, num_qa_labels=len(ANSWERS))
        engine = build_engine(getattr(lxmert_fast, cls)(config),
                              dsc.validate({"train_batch_size": 1}, world_size=1), total_steps=1)
        Checkpointer(run_dir).save(engine, 1, {})
        info = json.loads(json.dumps(info).replace('"VOCAB"', json.dumps(vocab)))
        with open(os.path.join(run_dir, "run.json"), "w") as f:
            json.dump({"model_class": cls, "model_config": config.to_dict(), **info}, f)
        torch.save(engine.module.state_dict(), os.path.join(root, f"{name}.pt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("export_runs"))
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                              "MASTER_PORT")}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), root], env=child_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _export(runs, name, tmp_path) -> str:
    from lxmert_fast.training.export import export

    return export(os.path.join(runs, name), str(tmp_path / f"{name}_export"))


def _assert_same_weights(runs, name, export_dir):
    import lxmert_fast

    loaded = getattr(lxmert_fast, RUNS[name][0]).from_pretrained(export_dir).state_dict()
    want = torch.load(os.path.join(runs, f"{name}.pt"), weights_only=True)
    assert sorted(loaded) == sorted(want)
    for key, value in want.items():
        assert torch.equal(loaded[key], value.float()), key


def _read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_finetuning_export_carries_its_label_tables_and_vocab(runs, tmp_path):
    from lxmert_fast.tasks.answers import AnswerLabels

    out = _export(runs, "vqa", tmp_path)
    assert sorted(os.listdir(out)) == ["ans2label.json", "config.json", "label2ans.json",
                                       "model.safetensors", "vocab.txt"]
    for name in ("ans2label.json", "label2ans.json"):
        assert _read(os.path.join(out, name)) == _read(os.path.join(runs, "vqa", name)), name
    assert _read(os.path.join(out, "vocab.txt")).split() == [f"tok{i}" for i in range(30)]
    table = AnswerLabels.load(os.path.join(out, "ans2label.json"),
                              os.path.join(out, "label2ans.json"))
    assert table.label2ans == ANSWERS
    _assert_same_weights(runs, "vqa", out)


def test_pretraining_export_carries_its_answer_table(runs, tmp_path):
    out = _export(runs, "pretrain", tmp_path)
    assert sorted(os.listdir(out)) == ["answer_table.json", "config.json", "model.safetensors",
                                       "vocab.txt"]
    assert json.loads(_read(os.path.join(out, "answer_table.json"))) == PRETRAIN_TABLE
    _assert_same_weights(runs, "pretrain", out)


def test_a_run_without_answer_tables_exports_the_model_only(runs, tmp_path):
    from lxmert_fast.training.export import copy_answer_tables

    out = _export(runs, "nlvr2", tmp_path)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert copy_answer_tables(os.path.join(runs, "nlvr2"), out) == []
    _assert_same_weights(runs, "nlvr2", out)


if __name__ == "__main__":
    _make_runs(sys.argv[1])
