"""Helpers for the tests that launch lxmert_fast/train.py as real processes (one rank via
`python`, several via the `deepspeed` launcher on DeepSpeed's CPU accelerator over gloo)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "lxmert_fast", "train.py")
RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "CUDA_VISIBLE_DEVICES")
# tiny model on a 32-image synthetic world; a global batch of 8
COMMON = ["--model_size", "tiny", "--num_images", "32", "--no_progress", "--no_tensorboard",
          "--eval_examples", "16"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_env(cache_dir, threads) -> dict:
    """The test's environment minus rank variables; None leaves a setting at its default."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    if cache_dir is not None:
        env["LXMERT_FAST_CACHE"] = cache_dir
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), DS_ACCELERATOR="cpu")
    return env


def command(args, ranks: int, launcher: bool):
    if ranks == 1 and not launcher:
        return [sys.executable, TRAIN, *args]
    exe = shutil.which("deepspeed")
    head = [exe] if exe else [sys.executable, "-m", "deepspeed.launcher.runner"]
    if ranks == 1:
        return head + ["--master_port", str(free_port()), TRAIN, *args]
    return head + ["--num_gpus", str(ranks), "--master_port", str(free_port()), TRAIN, *args]


def start(args, cache_dir, ranks=1, launcher=False, defaults=False):
    env = run_env(cache_dir, None if defaults else max(1, 2 // ranks))
    return subprocess.Popen(command(args, ranks, launcher), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)


def run(args, cache_dir, ranks=1, timeout=600, check=True, launcher=False, defaults=False):
    proc = start(args, cache_dir, ranks, launcher, defaults)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"train.py timed out after {timeout} s:\n{out[-6000:]}")
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py exited {proc.returncode}:\n{out[-6000:]}")
    return proc.returncode, out


def losses(output_dir):
    from lxmert_fast.training.metrics import train_losses

    return train_losses(os.path.join(output_dir, "metrics.jsonl"))


def eval_lines(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(l)["eval"] for l in f if '"eval"' in l]


def ds_config(tmp_dir, name, stage, micro, gas, world):
    """A repo config (configs/zero<stage>_fp32.json) with a tiny batch triple."""
    with open(os.path.join(REPO, "configs", f"zero{max(stage, 1)}_fp32.json")) as f:
        cfg = json.load(f)
    cfg.update(train_batch_size=micro * gas * world, train_micro_batch_size_per_gpu=micro,
               gradient_accumulation_steps=gas)
    if stage == 0:
        cfg.pop("zero_optimization")
    path = os.path.join(tmp_dir, name)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def rank_pids(marker: str) -> dict:
    """local_rank -> pid of the train.py workers whose command line contains `marker`."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if marker in argv and len(argv) > 2 and argv[2] == TRAIN:
            for a in argv:
                if a.startswith("--local_rank="):
                    found[int(a.split("=")[1])] = int(pid)
    return found


def wait_for(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
