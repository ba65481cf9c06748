"""ds_config validation, argument validation and the LR schedule (unit tests, no process group)."""
import glob
import json
import os

import pytest
import torch

from lxmert_fast.training import args as cli
from lxmert_fast.training import ds_config as dsc
from lxmert_fast.training.schedule import WarmupLinear, build_scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 2}}


def test_repo_configs_are_valid_for_every_stage_and_precision():
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "*.json")))
    names = {os.path.basename(p) for p in paths}
    assert {f"zero{s}_{p}.json" for s in (1, 2, 3) for p in ("bf16", "fp16", "fp32")} <= names
    for path in paths:
        cfg = dsc.load(path, world_size=8)
        stage, prec = os.path.basename(path)[4], os.path.basename(path)[6:-5]
        assert cfg["zero_optimization"]["stage"] == int(stage)
        assert dsc.precision(cfg) == prec
        assert cfg["train_batch_size"] == 256 and cfg["train_micro_batch_size_per_gpu"] == 32
        assert cfg["gradient_clipping"] == 1.0


@pytest.mark.parametrize("cfg, words", [
    ({"zero_optimisation": {"stage": 1}}, ["'zero_optimisation'", "'zero_optimization'"]),
    ({"zero_optimization": {"stag": 1}}, ["'zero_optimization.stag'", "'stage'"]),
    ({"bf16": {"enable": True}}, ["'bf16.enable'", "'enabled'"]),
    ({"optimizer": {"type": "AdamW", "params": {"learning_rate": 1e-4}}},
     ["optimizer.params.learning_rate", "'lr'"]),
    ({"gradient_clippin": 1.0}, ["'gradient_clippin'", "'gradient_clipping'"]),
])
def test_unknown_keys_name_the_key_and_the_nearest_valid_one(cfg, words):
    with pytest.raises(dsc.DsConfigError) as e:
        dsc.validate({**BASE, **cfg}, world_size=2, source="x.json")
    for word in words:
        assert word in str(e.value)
    assert "x.json" in str(e.value)


@pytest.mark.parametrize("cfg, words", [
    ({"train_batch_size": "8"}, ["train_batch_size must be int", "'8'"]),
    ({"gradient_clipping": "1.0"}, ["gradient_clipping must be float"]),
    ({"bf16": {"enabled": "true"}}, ["bf16.enabled must be bool"]),
    ({"zero_optimization": {"stage": 4}}, ["zero_optimization.stage=4", "[0, 1, 2, 3]"]),
    ({"zero_optimization": {"stage": True}}, ["zero_optimization.stage=True"]),
    ({"zero_optimization": {"stage": 2, "overlap_comm": 1}}, ["overlap_comm must be bool"]),
    ({"fp16": {"enabled": True, "initial_scale_power": 16.5}}, ["initial_scale_power must be int"]),
    ({"optimizer": {"type": "AdamW", "params": {"betas": [0.9]}}}, ["betas must be two numbers"]),
    ({"optimizer": {"type": "Lamb"}}, ["optimizer.type='Lamb'"]),
    ({"scheduler": {"type": "WarmupLR"}}, ["'scheduler' is not used", "--warmup_ratio"]),
    ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, ["both true"]),
])
def test_wrong_types_and_unsupported_sections_are_rejected(cfg, words):
    with pytest.raises(dsc.DsConfigError) as e:
        dsc.validate({**BASE, **cfg}, world_size=2)
    for word in words:
        assert word in str(e.value)


def test_batch_triple_is_completed_or_rejected_naming_the_values():
    assert dsc.resolve_batch({"train_batch_size": 32}, 4, "c") == (32, 8, 1)
    assert dsc.resolve_batch({"train_micro_batch_size_per_gpu": 3}, 2, "c") == (6, 3, 1)
    assert dsc.resolve_batch({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4}, 2,
                             "c") == (32, 4, 4)
    assert dsc.resolve_batch({"train_micro_batch_size_per_gpu": 2,
                              "gradient_accumulation_steps": 3}, 2, "c") == (12, 2, 3)
    with pytest.raises(dsc.DsConfigError, match=r"train_batch_size=8 != .*=2 x .*=2 x world "
                                                r"size 3"):
        dsc.validate(dict(BASE), world_size=3)
    with pytest.raises(dsc.DsConfigError, match="train_batch_size=30 != "):
        dsc.resolve_batch({"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4}, 2, "c")
    with pytest.raises(dsc.DsConfigError, match="gradient_accumulation_steps=0 must be >= 1"):
        dsc.resolve_batch({"train_batch_size": 8, "gradient_accumulation_steps": 0}, 1, "c")
    with pytest.raises(dsc.DsConfigError, match="set train_batch_size or"):
        dsc.resolve_batch({}, 1, "c")


def test_load_reports_missing_file_and_json_position(tmp_path):
    with pytest.raises(dsc.DsConfigError, match="not found: .*nope.json"):
        dsc.load(str(tmp_path / "nope.json"), 1)
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "train_batch_size": 8,\n  oops\n}\n')
    with pytest.raises(dsc.DsConfigError, match="bad.json: invalid JSON at line 3"):
        dsc.load(str(bad), 1)


def test_optimizer_section_feeds_adamw_and_is_removed():
    cfg = dsc.validate({**BASE, "optimizer": {"type": "AdamW", "params": {
        "lr": 3e-4, "betas": [0.8, 0.9], "weight_decay": 0.1}}}, world_size=2)
    params = dsc.optimizer_params(cfg)
    assert params == {"lr": 3e-4, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.1}
    assert "optimizer" not in cfg
    default = dsc.default("cpu", world_size=2, global_batch=32)
    assert (default["train_batch_size"], default["train_micro_batch_size_per_gpu"]) == (32, 16)
    assert dsc.precision(dsc.default("cuda", 8, 256)) == "bf16"


def test_schedule_warms_up_then_decays_linearly_to_zero():
    f = WarmupLinear(total_steps=100, warmup_ratio=0.05)
    assert f.warmup_steps == 5
    assert [f(s) for s in range(6)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert f(50) == pytest.approx(50 / 95)
    assert f(100) == 0.0 and f(150) == 0.0
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = build_scheduler(opt, 100, 0.05)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:6] == pytest.approx([0.0, 2e-4, 4e-4, 6e-4, 8e-4, 1e-3])
    restored = build_scheduler(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3),
                               100, 0.05)
    restored.load_state_dict(sched.state_dict())
    assert restored.get_last_lr() == sched.get_last_lr()
    with pytest.raises(ValueError, match="warmup_ratio=1.0"):
        WarmupLinear(10, 1.0)


def test_arguments_are_validated_naming_the_flag(tmp_path):
    parser = cli.pretrain_parser()
    ok = cli.parse(cli.PretrainArgs, parser, ["--max_steps", "10", "--model_size", "tiny",
                                              "--deepspeed_config", "c.json", "--local_rank=0"])
    assert (ok.max_steps, ok.model_size, ok.deepspeed_config, ok.local_rank) == (10, "tiny",
                                                                                  "c.json", 0)
    for argv, msg in ((["--max_steps", "0"], "--max_steps=0 must be >= 1"),
                      (["--keep_last", "0"], "--keep_last=0"),
                      (["--warmup_ratio", "1.5"], "--warmup_ratio=1.5"),
                      (["--stop_at", "20", "--max_steps", "10"], "--stop_at=20"),
                      (["--dropout", "1.0"], "--dropout=1.0"),
                      (["--train_json", "a.json"], "--train_json given without --features "
                                                   "--valid_json")):
        with pytest.raises(ValueError, match=msg):
            cli.parse(cli.PretrainArgs, parser, argv)


def test_missing_files_are_all_listed_at_once(tmp_path):
    present = tmp_path / "train.json"
    present.write_text(json.dumps([]))
    args = cli.parse(cli.PretrainArgs, cli.pretrain_parser(), [
        "--train_json", str(present), str(tmp_path / "t2.json"), "--valid_json",
        str(tmp_path / "v.json"), "--features", str(tmp_path / "f.store"), "--vocab",
        str(tmp_path / "vocab.txt"), "--deepspeed_config", str(tmp_path / "ds.json")])
    with pytest.raises(FileNotFoundError) as e:
        cli.check_files(args)
    text = str(e.value)
    assert "5 input file(s) not found" in text
    for name in ("t2.json", "v.json", "f.store", "vocab.txt", "ds.json"):
        assert name in text
    assert "train.json\n" not in text


def test_machine_defaults_cpu_recipe_options_and_gpu_paper_recipe():
    from lxmert_fast.training import pretrain

    def resolved(device, *argv):
        args = cli.parse(cli.PretrainArgs, cli.pretrain_parser(), list(argv))
        pretrain.resolve_defaults(args, device)
        return args

    cpu, gpu = resolved("cpu"), resolved("cuda")
    assert (cpu.model_size, cpu.lr, cpu.itc, cpu.grounded_mask_rate, cpu.dropout) == \
        ("small", 3e-4, "on", 0.5, 0.0)
    assert (gpu.model_size, gpu.lr, gpu.itc, gpu.grounded_mask_rate, gpu.dropout) == \
        ("base", 1e-4, "off", None, None)         # dropout None: the config's 0.1
    assert resolved("cpu", "--dropout", "0.1").dropout == 0.1
