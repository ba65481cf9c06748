"""LXMERT pretraining task glue for train.py: machine-dependent defaults, data, model, forward.

Defaults when not given (the "runs in a few minutes on the machine at hand" rule):
on a CPU the `small` model (hidden 128, 2/2/2 layers, init std 0.02 x sqrt(768/128) = 0.049),
global batch 32, 2000 steps at lr 3e-4, with two recipe options that are not LXMERT's: visually
grounded words masked with p = 0.5 (others 0.15) and ALBEF's image-text contrastive loss before
fusion (about 6 minutes on two idle cores: held-out matching 0.73 vs 0.48 with shuffled
images; the paper's recipe does not ground words in that budget: README); on GPUs the paper's
recipe: the full `base` model (768, 9/5/5, init 0.02) in bf16 ZeRO-2, batch 256, 1000 steps at
the original lr 1e-4, 15% masking, no ITC. A given ds_config's optimizer lr is kept.
Without data paths the embedded synthetic world (lxmert_fast.data.world) is generated once and
its pretraining splits are used; the QA answer table is built from the training records and
saved with the run (answer_table.json) so a resumed run or an export uses the same ids.
"""
import json
import os
from dataclasses import dataclass

from . import ds_config as dsc

# name -> (hidden, heads, intermediate, l_layers, x_layers, r_layers)
MODEL_SIZES = {
    "tiny": (32, 2, 64, 1, 1, 1),
    "small": (128, 4, 512, 2, 2, 2),
    "base": (768, 12, 3072, 9, 5, 5),
}
# dropout None: the config's 0.1 (the paper's). CPU 0.0: the small model on the small world
# over-regularised at 0.1 (held-out, 4000 steps: QA 0.708 vs 0.491 with shuffled images at 0.0,
# 0.622 vs 0.485 at 0.1; matching 0.778 vs 0.711 at step 2000).
CPU_DEFAULTS = {"model_size": "small", "max_steps": 2000, "batch_size": 32, "lr": 3e-4,
                "grounded_mask_rate": 0.5, "itc": "on", "dropout": 0.0}
GPU_DEFAULTS = {"model_size": "base", "max_steps": 1000, "batch_size": 256, "lr": 1e-4,
                "grounded_mask_rate": None, "itc": "off", "dropout": None}
TASKS = ("mlm", "matched", "obj", "attr", "feat", "qa", "itc")


def resolve_defaults(args, device: str) -> None:
    """Fill the machine-dependent fields left unset (in place)."""
    defaults = GPU_DEFAULTS if device == "cuda" else CPU_DEFAULTS
    if args.model_size == "auto":
        args.model_size = defaults["model_size"]
    if args.max_steps is None:
        args.max_steps = defaults["max_steps"]
    if args.batch_size is None:
        args.batch_size = defaults["batch_size"]
    if args.lr is None and not args.deepspeed_config:
        args.lr = defaults["lr"]
    if args.grounded_mask_rate is None and (args.train_json is None or args.grounded_words):
        args.grounded_mask_rate = defaults["grounded_mask_rate"]   # only where words are known
    if args.itc is None:
        args.itc = defaults["itc"]
    if args.dropout is None:
        args.dropout = defaults["dropout"]
    if args.save_steps is None:
        args.save_steps = max(1, args.max_steps // 4)
    if args.num_workers is None:
        args.num_workers = 4 if device == "cuda" else 0
    if args.stop_at is not None and args.stop_at > args.max_steps:
        raise ValueError(f"--stop_at={args.stop_at} is beyond --max_steps={args.max_steps}")


def load_ds_config(args, device: str, world_size: int) -> dict:
    if args.deepspeed_config:
        return dsc.load(args.deepspeed_config, world_size)
    return dsc.default(device, world_size, args.batch_size)


@dataclass
class PretrainData:
    train: object           # PretrainDataset
    valid: object
    answer_table: object
    vocab: str
    vocab_size: int
    feature_dim: int
    source: str             # "synthetic world <root>" or the record paths


def _open_features(paths):
    from lxmert_fast.features import FeatureStore, TsvFeatures

    if all(p.endswith(".tsv") for p in paths):
        return TsvFeatures(paths)
    if len(paths) != 1:
        raise ValueError(f"--features: give one feature store or TSV file(s), got {paths}")
    return FeatureStore(paths[0])


def read_word_list(path: str) -> list:
    """Non-empty stripped lines of a word-list file (``--grounded_words``)."""
    with open(path, encoding="utf-8") as f:
        words = [line.strip() for line in f if line.strip()]
    if not words:
        raise ValueError(f"--grounded_words {path}: the file holds no words")
    return words


def longest_sentence(tokenizer, record_paths, cap: int = 20) -> int:
    """Tokens of the longest sentence of the records with [CLS] and [SEP], at most ``cap``: the
    synthetic world's default max_seq_len (padding beyond it changes nothing but the cost)."""
    from lxmert_fast.data.records import flatten, load_records

    sents = sorted({ex.sent.strip() for ex in flatten(load_records(record_paths))})
    longest = max(len(e.ids) for e in tokenizer.encode_batch(sents, add_special_tokens=False))
    return min(cap, longest + 2)


def default_init_range(hidden: int) -> float:
    """BERT's 0.02 for hidden 768, scaled by sqrt(768 / hidden) for other widths (keeps the
    initial activations' scale of the base model; narrow models at 0.02 sit on a long plateau
    before they learn cross-modal matching: shared/diagnostics/membership.py)."""
    return 0.02 * (768 / hidden) ** 0.5


def build_data(args) -> PretrainData:
    """Datasets, tokenizer and answer table (every rank builds its own; no collectives)."""
    from lxmert_fast.data.pretrain import AnswerTable, PretrainDataset
    from lxmert_fast.data.tokenization import load_tokenizer, resolve_vocab

    if args.train_json is None:
        from lxmert_fast.data.world import ensure_world

        from lxmert_fast.data.world import scene_spec

        world = ensure_world(seed=0, num_images=args.num_images, vocab=args.vocab,
                             spec=scene_spec(args.world_scenes))
        train_json, valid_json = [world.splits["pretrain_train"]], [world.splits["pretrain_valid"]]
        features, vocab = world.open_features(), world.vocab
        source = f"synthetic world {world.root}"
        grounded_path = args.grounded_words or world.grounded_words
        if args.max_boxes is None:      # no image has more: padding further changes nothing
            args.max_boxes = scene_spec(args.world_scenes).objects_per_image[1]
    else:
        train_json, valid_json = args.train_json, args.valid_json
        features, vocab, source = _open_features(args.features), resolve_vocab(args.vocab), \
            " ".join(train_json)
        grounded_path = args.grounded_words
    if args.max_boxes is None:
        args.max_boxes = 36
    grounded = read_word_list(grounded_path) if grounded_path else []
    tokenizer = load_tokenizer(vocab)
    if args.max_seq_len is None:
        args.max_seq_len = (longest_sentence(tokenizer, train_json + valid_json)
                            if args.train_json is None else 20)
    common = dict(features=features, tokenizer=tokenizer, max_seq_len=args.max_seq_len,
                  max_boxes=args.max_boxes, seed=args.seed)
    # the answer table is built from the training records (prepared once, cached)
    train = PretrainDataset(train_json, grounded_words=grounded,
                            grounded_mask_rate=args.grounded_mask_rate, **common)
    saved = os.path.join(args.output_dir, "answer_table.json")
    if args.resume and os.path.exists(saved) and \
            AnswerTable.load(saved).all_answers() != train.answer_table.all_answers():
        raise ValueError(f"--resume: the answer table of the training records differs from the "
                         f"run's {saved}: the records changed since the run started")
    # held-out masking is always the paper's (15% of words): one yardstick for every recipe
    valid = PretrainDataset(valid_json, answer_table=train.answer_table, train=False,
                            grounded_words=grounded, **common)
    probe = features.gather([0], max_boxes=1)["features"]
    return PretrainData(train, valid, train.answer_table, vocab, tokenizer.get_vocab_size(),
                        int(probe.shape[-1]), source)


def model_config(args, data: PretrainData):
    from lxmert_fast import LxmertConfig

    hidden, heads, inter, l_layers, x_layers, r_layers = MODEL_SIZES[args.model_size]
    if args.hidden_size is not None:
        hidden, inter = args.hidden_size, 4 * args.hidden_size
        heads = max(h for h in (1, 2, 4, 8, 12, 16) if hidden % h == 0 and hidden // h >= 16) \
            if hidden >= 16 else 1
    extra = {} if args.dropout is None else {"hidden_dropout_prob": args.dropout,
                                             "attention_probs_dropout_prob": args.dropout}
    return LxmertConfig(
        vocab_size=data.vocab_size, hidden_size=hidden, num_attention_heads=heads,
        intermediate_size=inter, l_layers=args.l_layers or l_layers,
        x_layers=args.x_layers or x_layers, r_layers=args.r_layers or r_layers,
        num_qa_labels=max(1, len(data.answer_table)), visual_feat_dim=data.feature_dim,
        initializer_range=getattr(args, "initializer_range", None) or default_init_range(hidden),
        task_itc=getattr(args, "itc", None) == "on",
        kernel_impl=args.kernel_impl, **extra)


def save_run_info(args, data: PretrainData, config, ds_config: dict, world_size: int) -> None:
    """run.json (what export needs: model class + config) and the answer table; rank 0 only."""
    os.makedirs(args.output_dir, exist_ok=True)
    info = {"model_class": "LxmertForPreTraining", "model_config": config.to_dict(),
            "ds_config": ds_config, "world_size": world_size, "vocab": data.vocab,
            "data": data.source, "args": {k: v for k, v in vars(args).items()}}
    path = os.path.join(args.output_dir, "run.json")
    if args.resume and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)["model_config"]
        diff = sorted(k for k in set(old) | set(info["model_config"])
                      if old.get(k) != info["model_config"].get(k))
        if diff:
            raise ValueError(f"--resume: model config differs from the run in {args.output_dir} "
                             f"in {diff} (e.g. {diff[0]}: {old.get(diff[0])!r} -> "
                             f"{info['model_config'].get(diff[0])!r})")
    with open(path + ".tmp", "w") as f:
        json.dump(info, f, indent=1, default=str)
    os.replace(path + ".tmp", path)
    data.answer_table.save(os.path.join(args.output_dir, "answer_table.json"))


class MakePacked:
    """MicroBatch -> packed batch (data.pretrain.make_packed); epoch-dependent masking and the
    QA switch set per call, so it is correct in any DataLoader worker (picklable).

    With ``sampler`` (the run's ResumableBatchSampler) the batch also carries ``loss_norm``:
    for the losses whose item count varies (masked tokens, QA answers), the factor that turns
    this micro-batch's mean into its share of the mean over the whole global batch (every
    micro-batch of every rank): local count x micro-batches per step / global count. The
    global counts come from the draws of the step's examples (a pure function of their
    indices), so no collective and no device sync is needed; DeepSpeed's averaging over
    micro-batches and ranks then gives the global-batch mean and its gradient whatever the
    split (issue 22)."""

    def __init__(self, dataset, qa_from_epoch: int, features_on_device: bool = False,
                 sampler=None):
        self.dataset, self.qa_from_epoch = dataset, qa_from_epoch
        self.features_on_device, self.sampler = features_on_device, sampler

    def __call__(self, mb):
        self.dataset.set_epoch(mb.epoch)
        self.dataset.enable_qa(mb.epoch >= self.qa_from_epoch)
        batch = self.dataset.make_packed(mb.indices, features_on_device=self.features_on_device)
        if self.sampler is not None:
            batch["loss_norm"], batch["loss_present"] = self._norm(mb, batch)
        return batch

    def _norm(self, mb, batch):
        """({task: scale}, {task: 1 where the global batch has items}) as CPU tensors."""
        import torch

        total = self.dataset.item_counts(self.sampler.global_indices(mb.step))
        per_step = self.sampler.global_batch // self.sampler.micro_batch
        local = {"mlm": batch["labels"], "qa": batch["ans"]}
        scale = {task: torch.tensor(float(int((local[task] >= 0).sum())) * per_step / count
                                    if count else 0.0, dtype=torch.float64)
                 for task, count in total.items()}
        from lxmert_fast.data.batch import KeepDtype

        return KeepDtype(scale), {task: torch.tensor(1.0 if count else 0.0)
                                  for task, count in total.items()}


make_batch_fn = MakePacked
