"""Command-line arguments of the training entry points, as validated dataclasses.

`RunArgs` holds what every DeepSpeed run has (output dir, steps, checkpoints, seed, resume,
ds_config through `deepspeed.add_config_arguments`); fine-tuning subclasses it like
`PretrainArgs` does. Values are checked in __post_init__ with messages naming the flag, and
`missing_files` lists every absent input at once, before any process group starts.
"""
import argparse
import os
from dataclasses import dataclass, fields
from typing import List, Optional

MODEL_SIZES = ("auto", "tiny", "small", "base")
KERNEL_IMPLS = ("auto", "triton", "torch")
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune")


def _positive(obj, *names, allow_none=True, minimum=1):
    for name in names:
        value = getattr(obj, name)
        if value is None and allow_none:
            continue
        if value is None or value < minimum:
            raise ValueError(f"--{name}={value} must be >= {minimum}")


@dataclass
class RunArgs:
    output_dir: str = "runs/pretrain"
    max_steps: Optional[int] = None       # planned optimizer steps (None: the task's default)
    save_steps: Optional[int] = None      # checkpoint every N steps (None: ~5 per run)
    eval_steps: int = 0                   # held-out evaluation every N steps (0: at the end)
    stop_at: Optional[int] = None         # stop (checkpointed) at this step; schedule unchanged
    seed: int = 0
    resume: bool = False
    keep_last: int = 2
    lr: Optional[float] = None            # overrides the ds_config optimizer lr
    warmup_ratio: float = 0.05
    kernel_impl: str = "auto"
    compile: str = "auto"                 # torch.compile mode (training/compile.py)
    num_workers: Optional[int] = None     # DataLoader workers (None: 0 on CPU, 4 on GPU)
    gradient_checkpointing: bool = False  # recompute the encoder layers in the backward
    dist_timeout: float = 1800.0          # seconds a rank may wait on the others (dist_watch)
    no_tensorboard: bool = False
    no_progress: bool = False
    deepspeed_config: Optional[str] = None
    local_rank: int = -1
    deepspeed: bool = False

    def __post_init__(self):
        _positive(self, "max_steps", "save_steps", "stop_at", "keep_last")
        _positive(self, "eval_steps", "num_workers", minimum=0)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr={self.lr} must be > 0")
        if not self.dist_timeout > 0:
            raise ValueError(f"--dist_timeout={self.dist_timeout} must be > 0 seconds")
        if self.kernel_impl not in KERNEL_IMPLS:
            raise ValueError(f"--kernel_impl={self.kernel_impl!r} is not one of {KERNEL_IMPLS}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"--compile={self.compile!r} is not one of {COMPILE_MODES}")
        if None not in (self.stop_at, self.max_steps) and self.stop_at > self.max_steps:
            raise ValueError(f"--stop_at={self.stop_at} is beyond --max_steps={self.max_steps}")


@dataclass
class PretrainArgs(RunArgs):
    train_json: Optional[List[str]] = None    # None: the synthetic world's pretrain_train
    valid_json: Optional[List[str]] = None
    features: Optional[List[str]] = None      # a feature store, or LXMERT TSV file(s)
    vocab: Optional[str] = None
    num_images: Optional[int] = None          # synthetic world size (None: its default)
    model_size: str = "auto"
    l_layers: Optional[int] = None
    x_layers: Optional[int] = None
    r_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    dropout: Optional[float] = None
    batch_size: Optional[int] = None          # global batch when no ds_config is given
    qa_from_epoch: int = 0
    max_seq_len: Optional[int] = None         # None: 20; the synthetic world's longest sentence
    max_boxes: Optional[int] = None           # None: the synthetic world's most objects, else 36
    eval_examples: Optional[int] = None       # cap on held-out examples per evaluation
    world_scenes: Optional[str] = None        # synthetic world's scene spec (None: default)
    grounded_words: Optional[str] = None      # word list (None: the synthetic world's)
    grounded_mask_rate: Optional[float] = None  # None: the machine default (GPU: off)
    initializer_range: Optional[float] = None   # None: 0.02 x sqrt(768 / hidden)
    itc: Optional[str] = None                 # "on"/"off" (None: the machine default)
    features_on_device: str = "auto"          # the feature table in device memory (auto/on/off)
    loss_normalization: str = "global"        # MLM/QA means over the global batch, or per micro

    def __post_init__(self):
        super().__post_init__()
        if self.model_size not in MODEL_SIZES:
            raise ValueError(f"--model_size={self.model_size!r} is not one of {MODEL_SIZES}")
        _positive(self, "l_layers", "x_layers", "r_layers", "hidden_size", "batch_size",
                  "num_images", "eval_examples")
        _positive(self, "qa_from_epoch", minimum=0)
        _positive(self, "max_seq_len", minimum=3)
        _positive(self, "max_boxes")
        if self.grounded_mask_rate is not None and not 0.0 <= self.grounded_mask_rate <= 1.0:
            raise ValueError(f"--grounded_mask_rate={self.grounded_mask_rate} must be in [0, 1]")
        if self.loss_normalization not in ("global", "micro_batch"):
            raise ValueError(f"--loss_normalization={self.loss_normalization!r} must be global "
                             f"or micro_batch")
        if self.features_on_device not in ("auto", "on", "off"):
            raise ValueError(f"--features_on_device={self.features_on_device!r} must be auto, on "
                             f"or off")
        if self.itc not in (None, "on", "off"):
            raise ValueError(f"--itc={self.itc!r} must be 'on' or 'off'")
        if self.initializer_range is not None and not self.initializer_range > 0:
            raise ValueError(f"--initializer_range={self.initializer_range} must be > 0")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout={self.dropout} must be in [0, 1)")
        given = [n for n in ("train_json", "valid_json", "features") if getattr(self, n)]
        if given and len(given) != 3:
            missing = sorted({"train_json", "valid_json", "features"} - set(given))
            raise ValueError(f"--{given[0]} given without --{' --'.join(missing)}: pass all "
                             f"three data paths, or none to use the synthetic world")


def add_run_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    import deepspeed

    a = p.add_argument
    a("--output_dir", default=RunArgs.output_dir, help="checkpoints, metrics.jsonl, tensorboard/")
    a("--max_steps", type=int, help="planned optimizer steps; defines the LR schedule")
    a("--save_steps", type=int, help="checkpoint every N steps (and at the end)")
    a("--eval_steps", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    a("--stop_at", type=int, help="stop after step N with a checkpoint (resume continues)")
    a("--seed", type=int, default=0)
    a("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    a("--keep_last", type=int, default=RunArgs.keep_last, help="checkpoints to keep")
    a("--lr", type=float, help="peak learning rate (default: ds_config optimizer lr, or 1e-4)")
    a("--warmup_ratio", type=float, default=RunArgs.warmup_ratio)
    a("--kernel_impl", default="auto", choices=KERNEL_IMPLS)
    a("--compile", default="auto", choices=COMPILE_MODES, help="torch.compile the training step "
      "(auto: 'reduce-overhead', i.e. with CUDA graphs, on CUDA; off on CPU)")
    a("--num_workers", type=int, help="DataLoader workers per rank")
    a("--gradient_checkpointing", action="store_true", help="activation checkpointing: "
      "recompute each encoder layer in the backward (less memory, one more forward)")
    a("--dist_timeout", type=float, default=RunArgs.dist_timeout, help="seconds a rank may wait "
      "on the others (a collective, a step, a checkpoint save) before every waiting rank prints "
      "its rank, step and operation and exits; must outlast the longest legitimate wait "
      "(README, Reliability)")
    a("--no_tensorboard", action="store_true")
    a("--no_progress", action="store_true", help="no tqdm bar")
    a("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    return deepspeed.add_config_arguments(p)


def pretrain_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="LXMERT pretraining with DeepSpeed ZeRO")
    add_run_args(p)
    a = p.add_argument
    a("--train_json", nargs="+", help="LXMERT pretraining record JSON file(s)")
    a("--valid_json", nargs="+", help="held-out record JSON file(s)")
    a("--features", nargs="+", help="feature store file, or LXMERT TSV file(s)")
    a("--vocab", help="BERT vocab.txt (default: installed BERT uncased, else trained)")
    a("--num_images", type=int, help="images of the generated synthetic world")
    a("--model_size", default="auto", choices=MODEL_SIZES,
      help="auto: small on CPU, base (9/5/5, 768) on GPU")
    for name in ("l_layers", "x_layers", "r_layers", "hidden_size"):
        a(f"--{name}", type=int, help="override the model size's value")
    a("--dropout", type=float, help="hidden and attention dropout (default 0.0 on CPU, the "
                                      "paper's 0.1 on GPU)")
    a("--batch_size", type=int, help="global batch when no --deepspeed_config is given")
    a("--qa_from_epoch", type=int, default=0, help="QA loss only from this epoch on")
    a("--max_seq_len", type=int, help="tokens per sentence with [CLS]/[SEP] (default: 20; the "
      "synthetic world's longest sentence, which pads less)")
    a("--max_boxes", type=int, help="objects per image (default: 36; the synthetic world's "
      "largest object count, which pads less)")
    a("--eval_examples", type=int, help="cap on held-out examples per evaluation")
    a("--world_scenes", help="synthetic world: classes and objects per image, e.g. "
      "'classes=12,per_image=1-3,objects=3-12' (default: the embedded world's)")
    a("--grounded_words", help="file of visually grounded words, one per line (object classes, "
      "attributes, counts): the evaluation reports masked-LM accuracy on them; default: the "
      "synthetic world's list, none for other data")
    a("--grounded_mask_rate", type=float, help="mask grounded words with this probability "
      "instead of 0.15 (80/10/10 kept; default: 0.5 on CPU where grounded words are known, "
      "off on GPU as in the paper)")
    a("--itc", choices=("on", "off"), help="add ALBEF's image-text contrastive loss on the "
      "single-modality encoders' outputs (not in LXMERT's recipe; default: on on CPU, off on GPU)")
    a("--initializer_range", type=float, help="std of the weight init (default 0.02 x "
      "sqrt(768 / hidden): BERT's 0.02 for the base model, scaled up for narrower ones)")
    a("--loss_normalization", default="global", choices=("global", "micro_batch"),
      help="global: the masked-LM and QA losses are means over the whole global batch (the "
      "same objective on any number of ranks and accumulation steps); micro_batch: the "
      "original's mean per micro-batch, averaged")
    a("--features_on_device", default="auto", choices=("auto", "on", "off"), help="load the "
      "whole feature store into device memory once (batches then carry image indices only); "
      "auto: on CUDA when it fits beside the step, off on CPU")
    return p


def parse(cls, parser: argparse.ArgumentParser, argv=None):
    """Parse argv into `cls`; the deepspeed launcher's extra flags are mapped onto its fields."""
    ns = parser.parse_args(argv)
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def missing_files(args) -> List[str]:
    """Every input path named by `args` that does not exist (all of them, not the first)."""
    paths = []
    for name in ("train_json", "valid_json", "features"):
        paths += [(name, p) for p in (getattr(args, name, None) or [])]
    for name in ("vocab", "deepspeed_config", "grounded_words"):
        if getattr(args, name, None):
            paths.append((name, getattr(args, name)))
    return [f"--{name} {p}" for name, p in paths if not os.path.exists(p)]


def check_files(args) -> None:
    missing = missing_files(args)
    if missing:
        raise FileNotFoundError(f"{len(missing)} input file(s) not found:\n  "
                                + "\n  ".join(missing))
