"""benchmarks/report.py: pytest-benchmark JSON -> markdown table + PNG chart (fast vs baseline)."""
import json

import pytest

from benchmarks import report

GPU = "NVIDIA H100 80GB HBM3"


def _bench(group, variant, median, baselines=(), **figures):
    return {"group": group, "name": f"test_x[{variant}]", "param": variant,
            "stats": {"median": median, "min": median, "mean": median},
            "extra_info": dict(variant=variant, role="fast" if baselines else "baseline",
                               baselines=list(baselines), device=GPU, **figures)}


@pytest.fixture
def results(tmp_path):
    data = {"machine_info": {"cpu": {"brand_raw": "Some CPU"}}, "benchmarks": [
        _bench("attention fwd+bwd", "eager", 400e-6, **{"GB/s": 330.0}),
        _bench("attention fwd+bwd", "sdpa", 250e-6, **{"GB/s": 528.0}),
        _bench("attention fwd+bwd", "triton", 100e-6, ("eager", "sdpa"), **{"GB/s": 1320.0}),
        _bench("pretrain step", "hf_compile", 0.045, **{"samples/s": 5689.0}),
        _bench("pretrain step", "ours", 0.020, ("hf_compile", "hf_missing"),
               ratio_vs_hf_missing=4.0, interleaved_ratio=3.5, interleaved_baseline="hf_missing",
               **{"samples/s": 12800.0}),
    ]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path


def test_table_rows_and_chart(results, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(results), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert text == capsys.readouterr().out.split("\nwrote ")[0]
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| benchmark | fast | baseline |")
    assert rows[2] == (f"| attention fwd+bwd | triton | eager | 100.0 us | 400.0 us | 4.00x | "
                       f"1,320 / 330 GB/s | {GPU} |")
    assert rows[3] == (f"| attention fwd+bwd | triton | sdpa | 100.0 us | 250.0 us | 2.50x | "
                       f"1,320 / 528 GB/s | {GPU} |")
    assert rows[4] == (f"| pretrain step | ours | hf_compile | 20.00 ms | 45.00 ms | 2.25x | "
                       f"12,800 / 5,689 samples/s | {GPU} |")
    # a baseline absent from the JSON falls back to the ratio recorded in the run
    assert rows[5] == (f"| pretrain step | ours | hf_missing | 20.00 ms | - | 4.00x (A/B 3.50x) | "
                       f"12,800 / - samples/s | {GPU} |")
    assert f"| attention fwd+bwd | sdpa | 250.0 us | 528 GB/s | {GPU} |" in rows
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_device_falls_back_to_machine_info(tmp_path):
    data = {"machine_info": {"cpu": {"brand_raw": "AMD EPYC"}},
            "benchmarks": [{"group": "g", "name": "test_y", "param": None,
                            "stats": {"median": 2.0}, "extra_info": {}}]}
    rows = report.load_rows([str(_write(tmp_path / "b.json", data))])
    assert rows[0]["device"] == "AMD EPYC" and rows[0]["variant"] == "test_y"
    assert report.comparisons(rows) == [] and report.chart(rows, str(tmp_path / "c.png")) is None


def test_bad_json_names_the_file(tmp_path):
    bad = _write(tmp_path / "not_bench.json", {"results": []})
    with pytest.raises(SystemExit, match="not_bench.json.*--benchmark-json"):
        report.main([str(bad)])
    with pytest.raises(SystemExit, match="missing.json"):
        report.main([str(tmp_path / "missing.json")])


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_ratio_pairs_each_fast_row_with_the_baseline_of_its_own_run(tmp_path):
    """Two runs of the same benchmark: each ratio uses the baseline timed in that run."""
    paths = []
    for k, (fast, base) in enumerate([(0.1, 1.0), (0.2, 3.0)]):
        data = {"benchmarks": [_bench("convert", "python", base),
                               _bench("convert", "cpp", fast, ("python",))]}
        paths.append(str(_write(tmp_path / f"run{k}.json", data)))
    ratios = [round(c["ratio"], 6) for c in report.comparisons(report.load_rows(paths))]
    assert ratios == [10.0, 15.0]


def test_launch_cost_rows_get_their_own_table(tmp_path):
    group = "launch cost per pretraining step (fwd+bwd, 9/5/5) eager"
    data = {"benchmarks": [
        _bench(group, "hf_eager", 1.0, aten_ops=2298, triton_launches=0, launches=2298),
        _bench(group, "ours_triton", 2.0, ("hf_eager",), aten_ops=1120, triton_launches=218,
               launches=1338),
    ]}
    path = tmp_path / "launch.json"
    path.write_text(json.dumps(data))
    rows = report.load_rows([str(path)])
    assert report.comparisons(rows) == []            # a count is not a speed ratio
    text = report.markdown(rows)
    assert f"| {group} | ours_triton | 1120 | 218 | 1338 | 0.58 of hf_eager | {GPU} |" in text
    assert f"| {group} | hf_eager | 2298 | 0 | 2298 | - | {GPU} |" in text
