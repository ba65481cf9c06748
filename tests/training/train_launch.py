"""Helpers for the tests that launch lxmert_fast/train.py (or finetune.py: `script=FINETUNE`) as
real processes (one rank via `python`, several via the `deepspeed` launcher on DeepSpeed's CPU
accelerator over gloo). A launch that outlives its timeout is killed (its whole process group)
and fails the test with the output it printed."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "lxmert_fast", "train.py")
FINETUNE = os.path.join(REPO, "lxmert_fast", "finetune.py")
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


def command(args, ranks: int, launcher: bool, script: str = TRAIN):
    if ranks == 1 and not launcher:
        return [sys.executable, script, *args]
    exe = shutil.which("deepspeed")
    head = [exe] if exe else [sys.executable, "-m", "deepspeed.launcher.runner"]
    if ranks == 1:
        return head + ["--master_port", str(free_port()), script, *args]
    return head + ["--num_gpus", str(ranks), "--master_port", str(free_port()), script, *args]


def start(args, cache_dir, ranks=1, launcher=False, defaults=False, extra_env=None, cmd=None,
          script=TRAIN):
    env = run_env(cache_dir, None if defaults else max(1, 2 // ranks))
    env.update(extra_env or {})
    return subprocess.Popen(cmd or command(args, ranks, launcher, script), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)


def _wait(proc, timeout, what="train.py"):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{what} timed out after {timeout} s:\n{out[-6000:]}")
    return out


def run(args, cache_dir, ranks=1, timeout=600, check=True, launcher=False, defaults=False,
        extra_env=None, script=TRAIN, cmd=None):
    proc = start(args, cache_dir, ranks, launcher, defaults, extra_env, cmd=cmd, script=script)
    what = " ".join([os.path.basename(script)] + [str(a) for a in args[:4]])
    out = _wait(proc, timeout, what)
    if check and proc.returncode != 0:
        raise AssertionError(f"{what} exited {proc.returncode}:\n{out[-6000:]}")
    return proc.returncode, out


def node_command(args, hostfile, node_rank, port):
    """The multi-node launch of one node without ssh (torchrun style), as the README shows it."""
    exe = shutil.which("deepspeed")
    head = [exe] if exe else [sys.executable, "-m", "deepspeed.launcher.runner"]
    return head + ["--hostfile", hostfile, "--no_ssh", "--num_nodes", "2", "--node_rank",
                   str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                   TRAIN, *args]


def run_two_nodes(args, cache_dir, tmp_dir, timeout=600):
    """Two "nodes" on localhost, one CPU rank each, each started by its own launcher."""
    hostfile = os.path.join(tmp_dir, "hostfile")
    with open(hostfile, "w") as f:
        f.write("node0 slots=1\nnode1 slots=1\n")
    port = free_port()
    procs = [start(args, cache_dir, ranks=2, cmd=node_command(args, hostfile, i, port))
             for i in (0, 1)]
    outs = [None, None]
    readers = [threading.Thread(target=lambda i=i: outs.__setitem__(i, procs[i].communicate()[0]))
               for i in (0, 1)]
    for t in readers:
        t.start()
    end = time.time() + timeout
    while any(t.is_alive() for t in readers):
        failed = any(p.poll() not in (None, 0) for p in procs)   # one node failed: stop both
        if failed or time.time() > end:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
        time.sleep(0.2)
    for i, (p, out) in enumerate(zip(procs, outs)):
        if p.returncode != 0:
            raise AssertionError(f"node {i} exited {p.returncode}:\n{out[-6000:]}")
    return outs


def fail_save_env(tmp_dir, rank, tag, pattern="optim_states"):
    """Environment that makes rank `rank` raise ENOSPC writing `pattern` files of checkpoint
    `tag` (a sitecustomize wrapping torch.save in that rank's process only)."""
    site = os.path.join(tmp_dir, "enospc_site")
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "sitecustomize.py"), "w") as f:
        f.write(_ENOSPC_SITE)
    path = os.pathsep.join([site, REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return {"PYTHONPATH": path, "ENOSPC_RANK": str(rank), "ENOSPC_MATCH": f"{tag}/*{pattern}*"}


_ENOSPC_SITE = """import os
if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get("ENOSPC_RANK"):
    import errno, fnmatch, torch
    _save = torch.save

    def _failing_save(obj, f, *args, **kwargs):
        if isinstance(f, str) and fnmatch.fnmatch(f, "*" + os.environ["ENOSPC_MATCH"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f)
        return _save(obj, f, *args, **kwargs)

    torch.save = _failing_save
"""


def losses(output_dir):
    from lxmert_fast.training.metrics import train_losses

    return train_losses(os.path.join(output_dir, "metrics.jsonl"))


def eval_lines(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(l)["eval"] for l in f if '"eval"' in l]


def ds_config(tmp_dir, name, stage, micro, gas, world, precision="fp32"):
    """A repo config (configs/zero<stage>_<precision>.json) with a tiny batch triple."""
    with open(os.path.join(REPO, "configs", f"zero{max(stage, 1)}_{precision}.json")) as f:
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
