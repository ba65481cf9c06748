"""The training step exactly as train.py builds it, in-process (tiny model, synthetic world), and
a dispatch mode that records every op that synchronises with the device or has a data-dependent
output shape (issue 13: none may run inside the step)."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# ops that read a device value on the host, or whose output shape depends on the data
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.unique_dim,
            aten._unique, aten._unique2, aten.unique_consecutive, aten.is_nonzero, aten.equal}
TRAIN_ARGS = ["--model_size", "tiny", "--num_images", "32", "--batch_size", "8", "--dropout",
              "0", "--itc", "on", "--no_progress", "--no_tensorboard"]


def _bool_index(indices) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)
               for t in indices or ())


class SyncDetector(TorchDispatchMode):
    """Records (op, reason) of every synchronising / data-dependent op dispatched under it."""

    def __init__(self):
        super().__init__()
        self.found = []

    def _check(self, func, args, kwargs):
        packet = func.overloadpacket
        if packet in SYNC_OPS or func in SYNC_OPS:
            return "reads a device value or has a data-dependent shape"
        if packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_) \
                and _bool_index(args[1]):
            return "boolean-mask indexing"
        if packet is aten.repeat_interleave and func.name().endswith(".Tensor") \
                and kwargs.get("output_size") is None:
            return "repeat_interleave without output_size"
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = self._check(func, args, kwargs)
        if why is not None:
            self.found.append(f"{func}: {why}")
        return func(*args, **kwargs)


def build_pretrain_step(cache_dir, extra_args=(), ds_config=None):
    """(engine, batches, args) built as train.py builds them (parse, defaults, data, config,
    model, engine, --compile); needs the process_group fixture."""
    import os

    from lxmert_fast import LxmertForPreTraining
    from lxmert_fast.training import args as cli
    from lxmert_fast.training import env, pretrain, step
    from lxmert_fast.training import ds_config as dsc
    from lxmert_fast.training.compile import compile_engine
    from lxmert_fast.training.engine import build_engine

    os.environ["LXMERT_FAST_CACHE"] = str(cache_dir)
    args = cli.parse(cli.PretrainArgs, cli.pretrain_parser(), [*TRAIN_ARGS, *extra_args])
    pretrain.resolve_defaults(args, "cpu")
    data = pretrain.build_data(args)
    config = pretrain.model_config(args, data)
    env.seed_everything(args.seed, 0)
    model = LxmertForPreTraining(config)
    cfg = ds_config or dsc.default("cpu", 1, args.batch_size)
    engine = build_engine(model, dsc.validate(cfg, 1), 10, args.warmup_ratio, args.lr)
    compile_engine(engine, args.compile, "cpu", 0)
    batches = step.PretrainBatches(pretrain.make_batch_fn(data.train, args.qa_from_epoch))
    return engine, batches, args
