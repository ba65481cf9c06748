"""Fine-tuning glue for ``lxmert_fast/finetune.py``: arguments, defaults, data, model, forward.

Arguments extend the training entry point's ``RunArgs`` (lxmert_fast.training.args: output dir,
steps, checkpoints, seed, resume, ds_config), so both commands take the same flags where they
apply. Defaults are the original recipe (lxmert_fast.tasks.registry: batch 32, 4 epochs, lr 5e-5,
GQA 1e-5, 10% warm-up); on a CPU without data arguments the synthetic world is used with the
``small`` model of pretraining, ``CPU_SYNTHETIC_STEPS`` steps (about two minutes on 2 cores) and
the task's learning rate times ``CPU_SYNTHETIC_LR_SCALE`` (3, the ratio of pretraining's CPU default
3e-4 to the paper's 1e-4: a small model on a short budget; NLVR2-style, 150 steps from a small
pretrained model: 0.54 at the paper's 5e-5 on 100 held-out pairs, 0.695 at 1.5e-4 on 400,
scratch 0.570: README).
"""
import argparse
import json
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional

from lxmert_fast.training import args as cli
from lxmert_fast.training import pretrain

from .dataset import LOSSES
from .records import TASKS
from .registry import TaskData, get_spec, load_task_data, world_paths

CPU_SYNTHETIC_STEPS = 150
CPU_SYNTHETIC_LR_SCALE = 3


@dataclass
class FinetuneArgs(cli.RunArgs):
    output_dir: str = "runs/finetune"
    warmup_ratio: float = 0.1                 # the original fine-tuning's BertAdam warm-up
    task: str = "vqa"
    from_pretrained: Optional[str] = None     # transformers-format dir or original *_LXRT.pth
    pretrain_answers: Optional[str] = None    # answer table of the pretraining QA head
    head_unmatched: str = "fresh"
    loss: Optional[str] = None
    eval_only: bool = False
    train_json: Optional[List[str]] = None
    valid_json: Optional[List[str]] = None
    features: Optional[List[str]] = None
    ans2label: Optional[str] = None
    label2ans: Optional[str] = None
    vocab: Optional[str] = None
    num_images: Optional[int] = None
    model_size: str = "auto"
    l_layers: Optional[int] = None
    x_layers: Optional[int] = None
    r_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    dropout: Optional[float] = None
    batch_size: Optional[int] = None
    epochs: Optional[float] = None
    eval_batch_size: Optional[int] = None
    max_seq_len: int = 20
    max_boxes: int = 36

    def __post_init__(self):
        super().__post_init__()
        if self.task not in TASKS:
            raise ValueError(f"--task={self.task!r} is not one of {list(TASKS)}")
        if self.loss is not None and self.loss not in LOSSES:
            raise ValueError(f"--loss={self.loss!r} is not one of {list(LOSSES)}")
        if self.task == "nlvr2" and self.loss == "bce":
            raise ValueError("--loss=bce: NLVR2 is trained with cross-entropy (as the original)")
        if self.head_unmatched not in ("fresh", "zero"):
            raise ValueError(f"--head_unmatched={self.head_unmatched!r}: 'fresh' or 'zero'")
        if self.eval_only and not (self.from_pretrained or self.resume):
            raise ValueError("--eval_only needs a model: --from_pretrained DIR (a fine-tuned "
                             "model) or --resume (the latest checkpoint in --output_dir)")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"--epochs={self.epochs} must be > 0")
        cli._positive(self, "batch_size", "eval_batch_size", "num_images", "hidden_size",
                      "l_layers", "x_layers", "r_layers", "max_boxes")
        cli._positive(self, "max_seq_len", minimum=3)
        given = {n for n in ("train_json", "valid_json", "features") if getattr(self, n)}
        need = {"valid_json", "features"} | (set() if self.eval_only else {"train_json"})
        if given and not need <= given:
            raise ValueError(f"--{' --'.join(sorted(given))} given without "
                             f"--{' --'.join(sorted(need - given))}: pass all of them, or none "
                             "to use the synthetic world")
        if given and self.task != "nlvr2" and not self.ans2label:
            raise ValueError(f"--task {self.task} with data files needs --ans2label")


def finetune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="LXMERT fine-tuning (VQA, GQA, NLVR2) with DeepSpeed")
    cli.add_run_args(p)
    p.set_defaults(output_dir=FinetuneArgs.output_dir, warmup_ratio=FinetuneArgs.warmup_ratio)
    a = p.add_argument
    a("--task", required=True, choices=TASKS)
    a("--from_pretrained", help="pretrained (or fine-tuned) transformers-format dir, or an "
                                "original *_LXRT.pth; default: from scratch")
    a("--pretrain_answers", help="answer table of the pretraining QA head (default: "
                                 "answer_table.json beside --from_pretrained)")
    a("--head_unmatched", default="fresh", choices=("fresh", "zero"),
      help="QA-head rows whose answer pretraining lacks: fresh init, or zero (the original)")
    a("--loss", choices=LOSSES, help="VQA/GQA: bce (default, the original) or ce")
    a("--eval_only", action="store_true", help="evaluate --from_pretrained or the --resume "
                                               "checkpoint; no training")
    a("--train_json", nargs="+", help="task record JSON file(s) (original format)")
    a("--valid_json", nargs="+", help="records to evaluate and predict")
    a("--features", nargs="+", help="feature store file, or LXMERT TSV file(s)")
    a("--ans2label", help="VQA/GQA trainval_ans2label.json")
    a("--label2ans", help="VQA/GQA trainval_label2ans.json (checked against --ans2label)")
    a("--vocab", help="BERT vocab.txt (default: installed BERT uncased, else trained)")
    a("--num_images", type=int, help="images of the generated synthetic world")
    a("--model_size", default="auto", choices=cli.MODEL_SIZES,
      help="architecture from scratch (auto: small on CPU, base on GPU)")
    for name in ("l_layers", "x_layers", "r_layers", "hidden_size"):
        a(f"--{name}", type=int, help="override the model size's value (from scratch)")
    a("--dropout", type=float, help="hidden and attention dropout (from scratch)")
    a("--batch_size", type=int, help="global batch when no --deepspeed_config is given (32)")
    a("--epochs", type=float, help="epochs when --max_steps is not given (4)")
    a("--eval_batch_size", type=int, help="per-rank evaluation batch (default: 2x micro batch)")
    a("--max_seq_len", type=int, default=20)
    a("--max_boxes", type=int, default=36)
    return p


def synthetic(args) -> bool:
    return args.features is None


def resolve_defaults(args, device: str) -> None:
    """Machine-dependent fields left unset (steps need the data: see ``plan_steps``)."""
    if args.model_size == "auto":
        args.model_size = "base" if device == "cuda" else "small"
    if args.batch_size is None:
        args.batch_size = get_spec(args.task).batch_size
    if args.num_workers is None:
        args.num_workers = 4 if device == "cuda" else 0
    if args.max_steps is None and synthetic(args) and device != "cuda" and args.epochs is None:
        args.max_steps = CPU_SYNTHETIC_STEPS
    if args.lr is None and synthetic(args) and device != "cuda" and peak_lr(args) is not None:
        args.lr = get_spec(args.task).lr * CPU_SYNTHETIC_LR_SCALE


def plan_steps(args, num_examples: int, global_batch: int) -> None:
    """``--max_steps`` from ``--epochs`` (4) when not given; save_steps default."""
    if args.max_steps is None:
        epochs = args.epochs if args.epochs is not None else get_spec(args.task).epochs
        args.max_steps = max(1, int(epochs * (num_examples // global_batch)))
    if args.save_steps is None:
        args.save_steps = max(1, args.max_steps // 4)
    if args.stop_at is not None and args.stop_at > args.max_steps:
        raise ValueError(f"--stop_at={args.stop_at} is beyond --max_steps={args.max_steps}")


load_ds_config = pretrain.load_ds_config  # the same rule as pretraining: given file or default


def peak_lr(args) -> Optional[float]:
    """--lr, else the ds_config file's optimizer lr, else the task's recipe lr."""
    if args.lr is not None:
        return args.lr
    if args.deepspeed_config:
        with open(args.deepspeed_config) as f:
            if "lr" in json.load(f).get("optimizer", {}).get("params", {}):
                return None
    return get_spec(args.task).lr


def pretrained_vocab(path: Optional[str]) -> Optional[str]:
    """The vocab.txt an exported checkpoint directory carries, if any."""
    vocab = os.path.join(path, "vocab.txt") if path and os.path.isdir(path) else None
    return vocab if vocab and os.path.isfile(vocab) else None


def build_data(args) -> TaskData:
    """Task datasets (train omitted with --eval_only), tokenizer-ready; every rank builds its own."""
    from lxmert_fast.data.tokenization import load_tokenizer, resolve_vocab

    if synthetic(args):
        from lxmert_fast.data.world import ensure_world

        world = ensure_world(seed=0, num_images=args.num_images, vocab=args.vocab)
        train, valid, a2l, l2a = world_paths(world, args.task)
        features, vocab = world.open_features(), world.vocab
    else:
        train, valid, a2l, l2a = args.train_json, args.valid_json, args.ans2label, args.label2ans
        features, vocab = pretrain._open_features(args.features), resolve_vocab(
            args.vocab or pretrained_vocab(args.from_pretrained))
    tokenizer = load_tokenizer(vocab)
    data = load_task_data(args.task, None if args.eval_only else train, valid, features,
                          tokenizer, a2l, l2a, loss=args.loss, max_seq_len=args.max_seq_len,
                          max_boxes=args.max_boxes)
    probe = features.gather([0], max_boxes=1)["features"]
    data.sources.update(vocab=vocab, vocab_size=tokenizer.get_vocab_size(),
                        feature_dim=int(probe.shape[-1]),
                        world=world.root if synthetic(args) else None)
    return data


def scratch_config(args, data: TaskData):
    """The architecture for a model trained from scratch (pretraining's model sizes)."""
    shape = SimpleNamespace(vocab_size=data.sources["vocab_size"],
                            feature_dim=data.sources["feature_dim"],
                            answer_table=data.answers.label2ans if data.answers else [0])
    return pretrain.model_config(args, shape)


class MakeBatch:
    """MicroBatch -> model kwargs (picklable, for DataLoader workers)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __call__(self, mb):
        return self.dataset.make_batch(mb.indices)


def build_model(args, data: TaskData):
    """(model, init info): from the run's own config on --resume, else scratch / pretrained /
    fine-tuned (lxmert_fast.tasks.modelinit); checked against the tokenizer and features."""
    from lxmert_fast import LxmertConfig

    from .modelinit import build_task_model

    spec = get_spec(args.task)
    config, source = scratch_config(args, data), args.from_pretrained
    run_json = os.path.join(args.output_dir, "run.json")
    if args.resume and os.path.exists(run_json):  # the checkpoint's weights replace these
        with open(run_json) as f:
            config, source = LxmertConfig.from_dict(json.load(f)["model_config"]), None
    model, init = build_task_model(
        args.task, config, data.answers.label2ans if data.answers else None, source,
        qa_loss=(args.loss or spec.loss) if spec.is_qa else None,
        pretrain_answers=args.pretrain_answers, unmatched=args.head_unmatched)
    cfg, src = model.config, data.sources
    if cfg.vocab_size < src["vocab_size"]:
        raise ValueError(f"model vocab_size {cfg.vocab_size} < tokenizer vocabulary "
                         f"{src['vocab_size']} ({src['vocab']})")
    if cfg.visual_feat_dim != src["feature_dim"]:
        raise ValueError(f"model visual_feat_dim {cfg.visual_feat_dim} != feature dimension "
                         f"{src['feature_dim']} of the features")
    cfg.kernel_impl = args.kernel_impl
    return model, init


def save_run_info(args, data: TaskData, config, ds_config: dict, world_size: int,
                  init: dict) -> None:
    """run.json (model class + config, as pretraining's, for --resume and export) and the
    answer tables; rank 0. An --eval_only run leaves the training run's files alone."""
    if args.eval_only:
        return
    os.makedirs(args.output_dir, exist_ok=True)
    from .modelinit import model_class

    info = {"model_class": model_class(args.task).__name__, "model_config": config.to_dict(),
            "task": args.task, "init": init, "ds_config": ds_config, "world_size": world_size,
            "data": data.sources, "args": dict(vars(args))}
    path = os.path.join(args.output_dir, "run.json")
    with open(path + ".tmp", "w") as f:
        json.dump(info, f, indent=1, default=str)
    os.replace(path + ".tmp", path)
    if data.answers is not None:
        data.answers.save(args.output_dir)


class Evaluator:
    """The held-out evaluation of a run: metrics over every rank, then (rank 0) the metrics JSON
    and the prediction file in ``output_dir``; returns {metric: accuracy} for the metrics log."""

    def __init__(self, args, data: TaskData, micro_batch: int, printer=print):
        self.args, self.data, self.printer = args, data, printer
        self.batch_size = args.eval_batch_size or 2 * micro_batch

    def __call__(self, engine, step: Optional[int] = None) -> dict:
        from lxmert_fast.training import env
        from lxmert_fast.training.engine import engine_dtype

        from .evaluate import evaluate, write_outputs

        step = int(engine.global_steps if step is None else step)
        result = evaluate(engine, self.data.valid, "valid", self.batch_size,
                          device=engine.device, dtype=engine_dtype(engine), control=True)
        if env.rank() == 0:
            paths = write_outputs(result, self.args.task, self.args.output_dir, "valid",
                                  extra={"step": step, "records": self.data.sources["valid"]})
            acc = result.accuracy
            shuffled = result.metrics.get("accuracy_shuffled_images")
            control = "" if shuffled is None else f" (shuffled images {shuffled:.4f})"
            self.printer(f"{self.args.task} valid @ step {step}: {result.metrics['metric']} "
                         f"{'n/a' if acc is None else f'{acc:.4f}'}{control} over "
                         f"{result.metrics['num_scored']} labelled of "
                         f"{result.metrics['num_predictions']}; {paths['predictions']}")
        acc = result.accuracy
        if acc is None:
            return {}
        out = {result.metrics["metric"]: acc}
        if "accuracy_shuffled_images" in result.metrics:
            out[result.metrics["metric"] + "_shuffled_images"] = \
                result.metrics["accuracy_shuffled_images"]
        return out


def save_final_model(engine, output_dir: str) -> str:
    """The fine-tuned model as a transformers-format directory ``<output_dir>/model`` with the
    task's answer tables (loads with ``--from_pretrained DIR --eval_only``): the training
    package's export of the final checkpoint (any ZeRO stage), on rank 0; the export copies the
    tables ``save_run_info`` wrote into the run directory."""
    from lxmert_fast.training import dist_watch, env
    from lxmert_fast.training.export import export

    path = os.path.join(output_dir, "model")
    with dist_watch.waiting("exporting the final model (rank 0; the other ranks wait)"):
        if env.rank() == 0:
            export(output_dir, path)
        env.barrier()
    return path
