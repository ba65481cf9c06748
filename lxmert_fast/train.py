"""LXMERT pretraining (Tan & Bansal, 2019) with DeepSpeed ZeRO: the five tasks (masked LM,
masked-object feature/label/attribute prediction, cross-modality matching, image QA) summed.

    deepspeed lxmert_fast/train.py                       # synthetic world, sized to the machine
    deepspeed --num_gpus 8 lxmert_fast/train.py --deepspeed_config configs/zero2_bf16.json \
        --train_json a.json --valid_json b.json --features feats.store --max_steps 100000
    deepspeed lxmert_fast/train.py --output_dir runs/x --resume   # continue from `latest`

Also runs as `python lxmert_fast/train.py` (one process). Parse -> build -> train -> close; the
parts live in lxmert_fast/training/ (shared with finetune.py).
"""
import os
import sys

if __package__ in (None, ""):  # `deepspeed lxmert_fast/train.py` runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lxmert_fast.training import env  # noqa: E402  (sets DS_ACCELERATOR before deepspeed loads)

# The host reads the losses every N steps (one metrics line per step still): on a GPU every
# read waits for the device, so the next steps' launches would not overlap the running step.
LOG_EVERY = {"cuda": 10}


def build(args, info):
    """Everything before the first step: data, process group, model, engine, resume state."""
    from lxmert_fast import LxmertForPreTraining
    from lxmert_fast.data import feature_table
    from lxmert_fast.training import pretrain
    from lxmert_fast.training.checkpoint import Checkpointer
    from lxmert_fast.training.compile import compile_engine
    from lxmert_fast.training.engine import build_engine
    from lxmert_fast.training.sampler import ResumableBatchSampler

    ds_config = pretrain.load_ds_config(args, info["device"], info["world_size"])
    ckpt = Checkpointer(args.output_dir, args.keep_last)
    if ckpt.has_checkpoints() and not args.resume:
        raise FileExistsError(f"{args.output_dir} already holds checkpoints: pass --resume to "
                              f"continue that run, or choose another --output_dir")
    data = pretrain.build_data(args)
    env.init_distributed(args.dist_timeout)
    config = pretrain.model_config(args, data)
    if env.rank() == 0:
        pretrain.save_run_info(args, data, config, ds_config, info["world_size"])
    env.seed_everything(args.seed, 0)        # identical initial weights on every rank
    model = LxmertForPreTraining(config)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    engine = build_engine(model, ds_config, args.max_steps, args.warmup_ratio, args.lr)
    compile_engine(engine, args.compile, info["device"], env.rank())
    sampler = ResumableBatchSampler(len(data.train), engine.train_micro_batch_size_per_gpu(),
                                    engine.gradient_accumulation_steps(), env.world_size(),
                                    env.rank(), args.seed)
    env.seed_everything(args.seed, env.rank())   # dropout differs by rank
    start = 0
    state = ckpt.load(engine) if args.resume else None   # verified, with a fallback
    if state is not None:
        start = sampler.load_state_dict(state["sampler"])
    elif args.resume and env.rank() == 0:
        print(f"--resume: no checkpoint in {args.output_dir} yet; starting from step 0")
    table = feature_table.maybe_load(args.features_on_device, data.train.features,
                                     args.max_boxes, engine.device,
                                     say=print if env.rank() == 0 else (lambda _: None))
    return data, engine, sampler, ckpt, start, table


def train(args, data, engine, sampler, ckpt, start, table=None):
    from lxmert_fast.training import dist_watch, loop, pretrain, step
    from lxmert_fast.training.evaluate import evaluate_pretraining, format_results
    from lxmert_fast.training.metrics import MetricsLogger

    metrics = MetricsLogger(args.output_dir, env.rank(), start, args.max_steps,
                            tensorboard=not args.no_tensorboard, progress=not args.no_progress,
                            eval_format=format_results)
    metrics.print(f"LXMERT pretraining: {engine.module.num_parameters() / 1e6:.1f}M parameters "
                  f"({args.model_size}), {len(data.train)} examples from {data.source}, "
                  f"batch {sampler.global_batch} on {env.world_size()} rank(s), steps "
                  f"{start}->{args.stop_at or args.max_steps} of {args.max_steps}")
    plan = loop.Plan(args.max_steps, args.save_steps, args.eval_steps, args.stop_at,
                     args.num_workers, log_every=LOG_EVERY.get(str(engine.device.type), 1))

    def evaluate(eng):
        return evaluate_pretraining(eng, data.valid, sampler.micro_batch, args.eval_examples)

    batches = step.PretrainBatches(pretrain.make_batch_fn(
        data.train, args.qa_from_epoch, features_on_device=table is not None,
        sampler=sampler if args.loss_normalization == "global" else None))
    try:
        done = loop.train(engine, sampler, batches, step.PretrainForward(table), plan,
                          pretrain.TASKS, ckpt, metrics, start, evaluate)
        metrics.print(f"stopped at step {done} of {args.max_steps}; checkpoint "
                      f"{ckpt.latest_tag()} in {ckpt.dir}; metrics in {metrics.path}")
        metrics.print(f"longest waits (--dist_timeout {args.dist_timeout:.0f} s): "
                      f"{dist_watch.longest_waits()}")
    finally:
        metrics.close()


def main(argv=None):
    info = env.setup_environment()
    from lxmert_fast.training import args as cli
    from lxmert_fast.training import pretrain

    args = cli.parse(cli.PretrainArgs, cli.pretrain_parser(), argv)
    cli.check_files(args)
    pretrain.resolve_defaults(args, info["device"])
    state = build(args, info)
    ok = False
    try:
        train(args, *state)
        ok = True
    finally:
        env.shutdown(ok)


if __name__ == "__main__":
    main()
