"""Turn pytest-benchmark JSON (``--benchmark-json``) into the README's results: a markdown table of
each fast variant against each of its baselines (times, ratio, the figure that matters, device)
and a PNG bar chart of fast vs baseline per benchmark (baseline = 1).

    python -m benchmarks.report RESULTS.json [MORE.json ...] [--out DIR]

Rows follow ``benchmarks.common.record``: within one ``group``, a row whose extra_info ``role`` is
"fast" names its ``baselines``; ratio = baseline median / fast median (> 1 means faster). A
baseline missing from the JSON falls back to the ``ratio_vs_<name>`` recorded in the run. Where a
row also timed its baseline A B A B (``interleaved_ratio``, CPU runs), that ratio is shown too.
"""
import argparse
import json
import os
import sys
from typing import List, Optional

FIGURES = ("samples/s", "images/s", "TFLOP/s", "GB/s")  # first present is the headline figure


def load_rows(paths: List[str]) -> List[dict]:
    """One dict per benchmark (group, variant, median seconds, extra_info) from the JSON files."""
    rows = []
    for run, path in enumerate(paths):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"report: cannot read benchmark JSON {path!r}: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            raise SystemExit(f"report: {path!r} is not pytest-benchmark JSON "
                             "(no 'benchmarks' list); write it with --benchmark-json")
        for b in data["benchmarks"]:
            info = b.get("extra_info") or {}
            rows.append({
                "group": b.get("group") or b["name"],
                "variant": info.get("variant") or b.get("param") or b["name"],
                "median": float(b["stats"]["median"]),
                "info": info,
                "device": info.get("device") or _machine(data),
                "run": run,
            })
    return rows


def _machine(data: dict) -> str:
    cpu = (data.get("machine_info") or {}).get("cpu") or {}
    return cpu.get("brand_raw") or (data.get("machine_info") or {}).get("machine") or "unknown"


def _headline(info: dict):
    for name in FIGURES:
        if info.get(name) is not None:
            return name, float(info[name])
    return None, None


def comparisons(rows: List[dict]) -> List[dict]:
    """Each fast row against each baseline it names, in file order. The baseline is taken from
    the same JSON file (the same run), never from another run of the same benchmark."""
    index = {(r.get("run", 0), r["group"], r["variant"]): r for r in rows}
    out = []
    for r in rows:
        if r["info"].get("role") != "fast" or _count(r["info"]) is not None:
            continue
        for base_name in r["info"].get("baselines") or []:
            base = index.get((r.get("run", 0), r["group"], base_name))
            if base is not None:
                ratio = base["median"] / r["median"]
            elif r["info"].get(f"ratio_vs_{base_name}") is not None:
                ratio = float(r["info"][f"ratio_vs_{base_name}"])
            else:
                continue
            out.append({"group": r["group"], "fast": r, "baseline": base,
                        "baseline_name": base_name, "ratio": ratio})
    return out


def _time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _fig(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _count(info: dict) -> Optional[float]:
    """Launch-cost rows (benchmarks/test_launch_cost_bench.py): launches or kernels per step."""
    value = info.get("launches", info.get("kernels"))
    return None if value is None else float(value)


def launch_table(rows: List[dict]) -> List[str]:
    """Launch cost per step (fewer is better), each row against its baseline's count."""
    counted = [r for r in rows if _count(r["info"]) is not None]
    if not counted:
        return []
    index = {(r.get("run", 0), r["group"], r["variant"]): r for r in counted}
    lines = ["", "Launch cost per step (eager: aten ops + Triton launches; compiled: kernels per "
             "call; fewer is better):", "", "| benchmark | variant | aten ops | Triton launches "
             "| launches or kernels | vs baseline | device |", "| --- | --- | --- | --- | --- | "
             "--- | --- |"]
    for r in counted:
        info, vs = r["info"], []
        for name in info.get("baselines") or []:
            base = index.get((r.get("run", 0), r["group"], name))
            if base is not None:
                vs.append(f"{_count(info) / _count(base['info']):.2f} of {name}")
        aten = info.get("aten_ops", "-")
        lines.append(f"| {r['group']} | {r['variant']} | {aten} | "
                     f"{info.get('triton_launches', '-')} | {int(_count(info))} | "
                     f"{'; '.join(vs) or '-'} | {r['device']} |")
    return lines


def markdown(rows: List[dict]) -> str:
    """The comparison table, the launch-cost table, then every measurement, each naming its
    device."""
    lines = ["| benchmark | fast | baseline | fast time | baseline time | ratio | figure "
             "(fast / baseline) | device |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in comparisons(rows):
        name, fast_fig = _headline(c["fast"]["info"])
        base = c["baseline"]
        base_fig = _headline(base["info"])[1] if base else None
        figure = f"{_fig(fast_fig)} / {_fig(base_fig)} {name}" if name else "-"
        ratio = f"{c['ratio']:.2f}x"
        info = c["fast"]["info"]
        if info.get("interleaved_baseline") == c["baseline_name"] and info.get("interleaved_ratio"):
            ratio += f" (A/B {float(info['interleaved_ratio']):.2f}x)"
        lines.append(f"| {c['group']} | {c['fast']['variant']} | {c['baseline_name']} | "
                     f"{_time(c['fast']['median'])} | {_time(base['median'] if base else None)} | "
                     f"{ratio} | {figure} | {c['fast']['device']} |")
    lines += launch_table(rows)
    lines += ["", "All measurements (median):", "",
              "| benchmark | variant | time | figure | device |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        name, value = _headline(r["info"])
        figure = f"{_fig(value)} {name}" if name else "-"
        lines.append(f"| {r['group']} | {r['variant']} | {_time(r['median'])} | {figure} | "
                     f"{r['device']} |")
    return "\n".join(lines) + "\n"


def chart(rows: List[dict], path: str) -> Optional[str]:
    """Horizontal bars per comparison: baseline = 1 and fast = ratio (speed relative to baseline).
    Returns the path written, or None when there is nothing to compare."""
    comps = comparisons(rows)
    if not comps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c['group']}\n{c['fast']['variant']} vs {c['baseline_name']}" for c in comps]
    ys = range(len(comps))
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(comps) + 1.5))
    ax.barh([y + 0.2 for y in ys], [1.0] * len(comps), height=0.4, label="baseline",
            color="#999999")
    ax.barh([y - 0.2 for y in ys], [c["ratio"] for c in comps], height=0.4, label="fast",
            color="#1f77b4")
    for y, c in zip(ys, comps):
        ax.text(c["ratio"], y - 0.2, f" {c['ratio']:.2f}x", va="center", fontsize=8)
    ax.set_xlim(0, 1.15 * max([1.0] + [c["ratio"] for c in comps]))
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed relative to the baseline (higher is better)")
    devices = sorted({c["fast"]["device"] for c in comps})
    ax.set_title("lxmert_fast vs baselines on " + "; ".join(devices), fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s)")
    parser.add_argument("--out", default=None,
                        help="folder for report.md and report.png (default: the first JSON's)")
    args = parser.parse_args(argv)
    rows = load_rows(args.json)
    out_dir = args.out or os.path.dirname(os.path.abspath(args.json[0]))
    os.makedirs(out_dir, exist_ok=True)
    text = markdown(rows)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    png = chart(rows, os.path.join(out_dir, "report.png"))
    sys.stdout.write(text)
    print(f"\nwrote {os.path.join(out_dir, 'report.md')}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
