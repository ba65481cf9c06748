"""finetune.py arguments: train.py's flags plus the task's, recipe defaults, clear errors."""
import json

import pytest

from lxmert_fast.tasks import runner
from lxmert_fast.training import args as cli


def _parse(*argv):
    return cli.parse(runner.FinetuneArgs, runner.finetune_parser(), list(argv))


def test_shared_flags_and_recipe_defaults():
    args = _parse("--task", "gqa", "--output_dir", "o", "--max_steps", "7", "--save_steps", "3",
                  "--seed", "5", "--resume", "--eval_only")
    assert (args.output_dir, args.max_steps, args.save_steps, args.seed) == ("o", 7, 3, 5)
    assert args.resume and args.eval_only and args.warmup_ratio == 0.1
    assert runner.peak_lr(args) == 1e-5                       # GQA's recipe lr
    assert runner.peak_lr(_parse("--task", "vqa")) == 5e-5
    assert runner.peak_lr(_parse("--task", "nlvr2", "--lr", "3e-4")) == 3e-4
    cpu = _parse("--task", "vqa")
    runner.resolve_defaults(cpu, "cpu")
    assert (cpu.model_size, cpu.batch_size, cpu.max_steps) == ("small", 32, runner.CPU_SYNTHETIC_STEPS)
    assert cpu.lr == pytest.approx(5e-5 * runner.CPU_SYNTHETIC_LR_SCALE)  # small model, short run
    given = _parse("--task", "vqa", "--lr", "1e-5")
    runner.resolve_defaults(given, "cpu")
    assert given.lr == 1e-5
    gpu = _parse("--task", "vqa", "--train_json", "t", "--valid_json", "v", "--features", "f",
                 "--ans2label", "a")
    runner.resolve_defaults(gpu, "cuda")
    runner.plan_steps(gpu, num_examples=1000, global_batch=32)
    assert (gpu.model_size, gpu.max_steps, gpu.save_steps) == ("base", 4 * 31, 31)
    assert gpu.lr is None and runner.peak_lr(gpu) == 5e-5     # the recipe's
    user_data_cpu = _parse("--task", "nlvr2", "--train_json", "t", "--valid_json", "v",
                           "--features", "f")
    runner.resolve_defaults(user_data_cpu, "cpu")
    assert runner.peak_lr(user_data_cpu) == 5e-5


def test_ds_config_lr_wins_over_recipe(tmp_path):
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"train_batch_size": 8,
                               "optimizer": {"type": "AdamW", "params": {"lr": 2e-5}}}))
    assert runner.peak_lr(_parse("--task", "vqa", "--deepspeed_config", str(cfg))) is None
    cpu = _parse("--task", "vqa", "--deepspeed_config", str(cfg))
    runner.resolve_defaults(cpu, "cpu")
    assert cpu.lr is None and runner.peak_lr(cpu) is None
    assert runner.load_ds_config(_parse("--task", "vqa", "--deepspeed_config", str(cfg)),
                                 "cpu", 2)["train_micro_batch_size_per_gpu"] == 4


@pytest.mark.parametrize("argv,message", [
    (("--task", "nlvr2", "--loss", "bce"), "NLVR2 is trained with cross-entropy"),
    (("--task", "vqa", "--valid_json", "v"), "without --features --train_json"),
    (("--task", "vqa", "--valid_json", "v", "--features", "f", "--eval_only", "--resume"),
     "needs --ans2label"),
    (("--task", "vqa", "--epochs", "0"), "--epochs=0.0 must be > 0"),
    (("--task", "vqa", "--eval_only"), "--eval_only needs a model"),
    (("--task", "vqa", "--max_seq_len", "2"), "--max_seq_len=2 must be >= 3"),
    (("--task", "vqa", "--warmup_ratio", "1.5"), "--warmup_ratio=1.5"),
])
def test_bad_arguments_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        _parse(*argv)


def test_unknown_task_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        _parse("--task", "okvqa")
    assert "invalid choice: 'okvqa'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--task='okvqa'"):
        runner.FinetuneArgs(task="okvqa")
