"""metrics.jsonl lines, truncation on resume, TensorBoard events and the plot command."""
import glob
import json
import math
import os

from lxmert_fast.training import plot
from lxmert_fast.training.metrics import MetricsLogger, read_metrics, train_losses


def _log(logger, steps, base=1.0):
    for step in steps:
        logger.log_step(step, 0, base / step, {"mlm": 0.5 / step, "qa": 0.1}, 1e-4 * step, 2.0,
                        samples=32, skipped_steps=0)


def test_one_line_per_step_with_the_required_fields_and_eval_lines(tmp_path):
    logger = MetricsLogger(str(tmp_path), rank=0, start_step=0, total_steps=4, progress=False)
    _log(logger, range(1, 5))
    logger.log_eval(4, {"mlm_acc": 0.5, "mlm_chance": 0.1})
    logger.log_step(5, 0, float("nan"), {"mlm": float("inf")}, 1e-4, None, 32, 1)
    logger.close()
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 4, 5]
    first = records[0]
    assert set(first) >= {"step", "epoch", "loss", "losses", "lr", "grad_norm", "samples_per_s",
                          "skipped_steps"}
    assert first["loss"] == 1.0 and first["losses"] == {"mlm": 0.5, "qa": 0.1}
    assert first["samples_per_s"] > 0 and first["lr"] == 1e-4
    assert records[4] == {"step": 4, "eval": {"mlm_acc": 0.5, "mlm_chance": 0.1}}
    assert records[5]["loss"] == "nan" and records[5]["losses"]["mlm"] == "inf"
    assert records[5]["grad_norm"] is None
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))


def test_resume_keeps_only_lines_up_to_the_checkpoint_step(tmp_path):
    logger = MetricsLogger(str(tmp_path), 0, 0, 10, tensorboard=False, progress=False)
    _log(logger, range(1, 8))                       # killed after step 7, checkpoint at 5
    logger.close()
    resumed = MetricsLogger(str(tmp_path), 0, 5, 10, tensorboard=False, progress=False)
    _log(resumed, range(6, 11), base=2.0)
    resumed.close()
    losses = train_losses(str(tmp_path / "metrics.jsonl"))
    assert sorted(losses) == list(range(1, 11))
    assert losses[5] == 1.0 / 5 and losses[6] == 2.0 / 6
    fresh = MetricsLogger(str(tmp_path), 0, 0, 10, tensorboard=False, progress=False)
    fresh.close()
    assert read_metrics(str(tmp_path / "metrics.jsonl")) == []


def test_other_ranks_write_nothing(tmp_path):
    logger = MetricsLogger(str(tmp_path), rank=1, start_step=0, total_steps=3)
    _log(logger, range(1, 3))
    logger.log_eval(2, {"a": 1.0})
    logger.close()
    assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_plot_writes_a_png(tmp_path):
    logger = MetricsLogger(str(tmp_path), 0, 0, 6, tensorboard=False, progress=False)
    _log(logger, range(1, 7))
    logger.log_eval(3, {"qa_acc": 0.3, "qa_chance": 0.1})
    logger.log_eval(6, {"qa_acc": 0.6, "qa_chance": 0.1})
    logger.close()
    plot.main([str(tmp_path), "--out", str(tmp_path / "c.png")])
    with open(tmp_path / "c.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(tmp_path / "c.png") > 10_000
    assert not math.isnan(json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
                          ["loss"])
