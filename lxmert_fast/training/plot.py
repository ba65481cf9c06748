"""Plot a run's metrics.jsonl to a PNG.

    python -m lxmert_fast.training.plot OUTPUT_DIR [--out curves.png]

Panels: total and per-task training losses (log scale), learning rate and gradient norm, and the
held-out evaluation accuracies against their constant-prediction baselines when eval lines exist.
"""
import argparse
import os
import sys

from .metrics import read_metrics


def _series(records, key, sub=None):
    xs, ys = [], []
    for r in records:
        value = r.get(key) if sub is None else (r.get(key) or {}).get(sub)
        if isinstance(value, (int, float)):
            xs.append(r["step"])
            ys.append(value)
    return xs, ys


def plot(metrics_path: str, out_path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    if not train:
        raise ValueError(f"{metrics_path} has no training lines to plot")
    fig, axes = plt.subplots(1, 3 if evals else 2, figsize=(15 if evals else 10, 4))
    ax = axes[0]
    ax.plot(*_series(train, "loss"), label="total", color="black")
    for task in sorted({k for r in train for k in r.get("losses", {})}):
        ax.plot(*_series(train, "losses", task), label=task, linewidth=0.8)
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training losses")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(*_series(train, "lr"), color="tab:blue")
    ax.set(xlabel="step", ylabel="learning rate", title="lr and gradient norm")
    twin = ax.twinx()
    twin.plot(*_series(train, "grad_norm"), color="tab:red", linewidth=0.6)
    twin.set_ylabel("grad norm", color="tab:red")
    if evals:
        ax = axes[2]
        names = sorted({k for r in evals for k in r["eval"] if k.endswith("_acc")})
        for name in names:
            line, = ax.plot(*_series(evals, "eval", name), marker="o", label=name)
            base = _series(evals, "eval", name.replace("_acc", "_chance"))
            ax.plot(*base, linestyle="--", color=line.get_color(), linewidth=0.8)
        ax.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="held-out (dashed: chance)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="plot a run's metrics.jsonl")
    p.add_argument("output_dir", help="the run's --output_dir (or a metrics.jsonl path)")
    p.add_argument("--out", help="PNG path (default: OUTPUT_DIR/curves.png)")
    args = p.parse_args(argv)
    path = args.output_dir if args.output_dir.endswith(".jsonl") else os.path.join(
        args.output_dir, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"plot failed: {path} not found")
    out = args.out or os.path.join(os.path.dirname(path), "curves.png")
    print(f"wrote {plot(path, out)}")


if __name__ == "__main__":
    main()
