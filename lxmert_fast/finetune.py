"""LXMERT fine-tuning (Tan & Bansal, 2019, section 5) on VQA 2.0, GQA and NLVR2 with DeepSpeed,
then evaluation of the held-out split: metrics JSON and the leaderboard prediction file.

    deepspeed lxmert_fast/finetune.py --task vqa --from_pretrained runs/pretrain/export
    deepspeed --num_gpus 8 lxmert_fast/finetune.py --task gqa --from_pretrained DIR \
        --train_json train.json --valid_json testdev.json --features gqa.store \
        --ans2label trainval_ans2label.json --deepspeed_config configs/zero2_bf16.json
    deepspeed lxmert_fast/finetune.py --task nlvr2 --output_dir runs/n --resume   # continue
    deepspeed lxmert_fast/finetune.py --task vqa --from_pretrained runs/v/model --eval_only

Without data arguments it fine-tunes on the embedded synthetic world. Checkpointing, sampling,
the LR schedule, the loop and the metrics log are the pretraining ones (lxmert_fast/training);
the task parts live in lxmert_fast/tasks. Also runs as `python lxmert_fast/finetune.py`.
"""
import os
import sys

if __package__ in (None, ""):  # `deepspeed lxmert_fast/finetune.py` runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lxmert_fast.training import env  # noqa: E402  (sets DS_ACCELERATOR before deepspeed loads)

LOG_EVERY = {"cuda": 10}   # host reads of the losses every N steps on a GPU (train.py)


def build(args, info):
    """Data, process group, model (scratch / pretrained / fine-tuned), engine, resume state."""
    from lxmert_fast.tasks import runner
    from lxmert_fast.training.checkpoint import Checkpointer
    from lxmert_fast.training.compile import compile_engine
    from lxmert_fast.training.engine import build_engine
    from lxmert_fast.training.sampler import ResumableBatchSampler

    ds_config = runner.load_ds_config(args, info["device"], info["world_size"])
    ckpt = Checkpointer(args.output_dir, args.keep_last)
    if args.eval_only and args.resume and not ckpt.has_checkpoints():
        raise FileNotFoundError(f"--eval_only --resume: no checkpoint in {ckpt.dir}")
    if ckpt.has_checkpoints() and not (args.resume or args.eval_only):
        raise FileExistsError(f"{args.output_dir} already holds checkpoints: pass --resume to "
                              f"continue that run, or choose another --output_dir")
    data = runner.build_data(args)
    env.init_distributed(args.dist_timeout)
    if args.eval_only:
        args.max_steps, args.save_steps = args.max_steps or 1, args.save_steps or 1
    else:
        runner.plan_steps(args, len(data.train), ds_config["train_batch_size"])
    env.seed_everything(args.seed, 0)        # identical initial weights on every rank
    model, init = runner.build_model(args, data)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if env.rank() == 0:
        runner.save_run_info(args, data, model.config, ds_config, info["world_size"], init)
    engine = build_engine(model, ds_config, args.max_steps, args.warmup_ratio,
                          runner.peak_lr(args))
    if not args.eval_only:
        compile_engine(engine, args.compile, info["device"], env.rank())
    sampler = None if args.eval_only else ResumableBatchSampler(
        len(data.train), engine.train_micro_batch_size_per_gpu(),
        engine.gradient_accumulation_steps(), env.world_size(), env.rank(), args.seed)
    env.seed_everything(args.seed, env.rank())   # dropout differs by rank
    start = 0
    state = ckpt.load(engine) if args.resume else None    # verified, with a fallback
    if state is not None:
        start = sampler.load_state_dict(state["sampler"]) if sampler else int(state["step"])
    elif args.resume and env.rank() == 0:
        print(f"--resume: no checkpoint in {args.output_dir} yet; starting from step 0")
    return data, engine, sampler, ckpt, start, init


def train(args, data, engine, sampler, ckpt, start, init):
    from lxmert_fast.tasks import runner
    from lxmert_fast.training import dist_watch, loop, step
    from lxmert_fast.training.compile import compiled_mode
    from lxmert_fast.training.metrics import MetricsLogger

    metrics = MetricsLogger(args.output_dir, env.rank(), start, args.max_steps,
                            tensorboard=not args.no_tensorboard, progress=not args.no_progress)
    metrics.print(f"LXMERT fine-tuning on {args.task}: {engine.module.num_parameters() / 1e6:.1f}M "
                  f"parameters ({init['init']}), {len(data.train)} examples, batch "
                  f"{sampler.global_batch} on {env.world_size()} rank(s), steps "
                  f"{start}->{args.stop_at or args.max_steps} of {args.max_steps}")
    plan = loop.Plan(args.max_steps, args.save_steps, args.eval_steps, args.stop_at,
                     args.num_workers, log_every=LOG_EVERY.get(str(engine.device.type), 1))
    evaluate = runner.Evaluator(args, data, sampler.micro_batch, metrics.print)
    # a compiled step needs static shapes: text padded to max_seq_len (eager: the longest)
    compiled = compiled_mode(engine.module) is not None
    batches = step.FinetuneBatches(runner.MakeBatch(data.train),
                                   args.max_seq_len if compiled else None)
    try:
        done = loop.train(engine, sampler, batches, step.FinetuneForward(args.task), plan,
                          [args.task], ckpt, metrics, start, evaluate)
        if done == args.max_steps:
            runner.save_final_model(engine, args.output_dir)
        metrics.print(f"stopped at step {done} of {args.max_steps}; checkpoint "
                      f"{ckpt.latest_tag()} in {ckpt.dir}; metrics in {metrics.path}")
        metrics.print(f"longest waits (--dist_timeout {args.dist_timeout:.0f} s): "
                      f"{dist_watch.longest_waits()}")
    finally:
        metrics.close()


def evaluate_only(args, data, engine, start):
    from lxmert_fast.tasks import runner

    from lxmert_fast.training import dist_watch

    evaluate = runner.Evaluator(args, data, engine.train_micro_batch_size_per_gpu(), print)
    with dist_watch.waiting(f"evaluation (--eval_only) of step {start}"):
        return evaluate(engine, step=start)


def main(argv=None):
    info = env.setup_environment()
    from lxmert_fast.tasks import runner
    from lxmert_fast.training import args as cli

    args = cli.parse(runner.FinetuneArgs, runner.finetune_parser(), argv)
    cli.check_files(args)
    runner.resolve_defaults(args, info["device"])
    data, engine, sampler, ckpt, start, init = build(args, info)
    ok = False
    try:
        if args.eval_only:
            evaluate_only(args, data, engine, start)
        else:
            train(args, data, engine, sampler, ckpt, start, init)
        ok = True
    finally:
        env.shutdown(ok)


if __name__ == "__main__":
    main()
