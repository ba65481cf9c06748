"""`--compile`: the training forward (and, through AOTAutograd, its backward) under
`torch.compile(fullgraph=True, dynamic=False)`, with CUDA graphs in "reduce-overhead" mode.

Modes: "auto" is "reduce-overhead" on CUDA (CUDA graphs: the step is launch-bound at 32 samples
per GPU, DESIGN.md section 3) and off elsewhere (inductor's CPU compile takes minutes and a CPU
step is matmul-bound); "off", or a torch.compile mode ("default", "reduce-overhead",
"max-autotune"). DeepSpeed ZeRO-1 and 2 keep whole parameters on every rank and reduce gradients
from hooks on the parameters, outside the graph: the module's forward is compiled and
`engine(...)`/`engine.backward` run unchanged (its forward hooks, loss scaling for fp16, gradient
accumulation). ZeRO-3 gathers parameters in module hooks inside the forward, which one graph
cannot hold: the run says so and stays eager.

Only the training call is compiled (module in train mode, gradients enabled): evaluation calls
the eager forward, so it neither compiles nor takes a recompile. Shapes are static (training/
step.py pads them) except the MLM gather's capacity (heads.mlm_gather_index: at most 8 buckets),
marked dynamic: one compiled graph serves every bucket (CUDA graphs record one per bucket seen).
The fused Triton ops are torch custom ops: no graph break at a kernel.
"""
from typing import Callable, Optional

import torch

MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune")
RECOMPILE_LIMIT = 16     # task sets (QA from an epoch on, ITC) x input dtypes: a few graphs


def resolve(flag: str, device_type: str, zero_stage: int, note: Callable[[str], None] = print
            ) -> Optional[str]:
    """The torch.compile mode for `--compile flag` on this run, or None (eager)."""
    if flag not in MODES:
        raise ValueError(f"--compile={flag!r} is not one of {MODES}")
    if flag == "off" or (flag == "auto" and device_type != "cuda"):
        return None
    mode = "reduce-overhead" if flag == "auto" else flag
    if zero_stage == 3:
        note(f"--compile {flag}: DeepSpeed ZeRO-3 gathers parameters in module hooks during the "
             f"forward, which torch.compile cannot hold in one graph; the step runs eagerly "
             f"(use ZeRO-1 or 2 for a compiled step)")
        return None
    if mode == "reduce-overhead" and device_type != "cuda":
        note(f"--compile {flag}: CUDA graphs need CUDA; compiling for {device_type} without them")
    return mode


def compile_training_forward(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Route `model`'s training calls through torch.compile(model.forward); eval and no-grad
    calls keep the eager forward. Parameters, state_dict and hooks are unchanged. In place."""
    if getattr(model, "_lxmert_compiled_mode", None) is not None:
        raise RuntimeError(f"{type(model).__name__} is already compiled "
                           f"(mode {model._lxmert_compiled_mode!r})")
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
    eager = model.forward
    compiled = torch.compile(eager, mode=mode, fullgraph=True, dynamic=False)
    graphs = mode == "reduce-overhead"

    def forward(*args, **kwargs):
        if model.training and torch.is_grad_enabled():
            if isinstance(kwargs.get("mlm_positions"), torch.Tensor):
                torch._dynamo.maybe_mark_dynamic(kwargs["mlm_positions"], 0)
            if graphs:  # each micro-batch is a new CUDA-graph iteration (the loop copies the
                torch.compiler.cudagraph_mark_step_begin()   # losses it keeps before the next)
            return compiled(*args, **kwargs)
        return eager(*args, **kwargs)

    model.forward = forward
    model._lxmert_compiled_mode = mode
    return model


def compiled_mode(model: torch.nn.Module) -> Optional[str]:
    """The mode `model`'s training forward was compiled with, or None (eager)."""
    return getattr(model, "_lxmert_compiled_mode", None)


def compile_engine(engine, flag: str, device_type: str, rank: int) -> Optional[str]:
    """`--compile flag` applied to a DeepSpeed engine's module (rank 0 prints the notes)."""
    mode = resolve(flag, device_type, engine.zero_optimization_stage(),
                   print if rank == 0 else (lambda _: None))
    if mode is not None:
        compile_training_forward(engine.module, mode)
    return mode
