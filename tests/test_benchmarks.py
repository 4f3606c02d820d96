"""The cost benchmark runs end to end on a tiny model and computes its ratios right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import adapter_cost


def test_summary_takes_medians_and_ratios_to_full_finetuning_and_the_floor():
    rows = [
        {"method": "full", "trainable": 10, "total": 10, "step_s": s, "peak_rss_mib": 100.0,
         "saved_mib": 8.0, "full_file_bytes": 1000, "cpu_stall": 0.0, "repeat": rep}
        for rep, s in enumerate((1.0, 2.0, 9.0))
    ] + [
        {"method": "floor", "trainable": 2, "total": 10, "step_s": s, "peak_rss_mib": 50.0,
         "saved_mib": 2.0, "full_file_bytes": 1000, "cpu_stall": 0.0, "repeat": rep}
        for rep, s in enumerate((0.5, 1.0, 4.0))
    ] + [
        {"method": "lora", "trainable": 1, "total": 11, "step_s": s, "peak_rss_mib": 80.0,
         "saved_mib": 4.0, "infer_ratio": 1.5, "infer_merged_ratio": 1.0,
         "full_file_bytes": 1000, "adapter_file_bytes": 20, "cpu_stall": stall, "repeat": rep}
        for rep, (s, stall) in enumerate(((0.5, 0.0), (1.0, 0.05), (1.5, 0.0), (30.0, 0.4)))
    ]  # fmt: skip
    table = {t["method"]: t for t in adapter_cost.summarise(rows, ["full", "floor", "lora"])}
    assert table["full"]["step_s"] == 2.0 and table["full"]["step_ratio"] == 1.0
    lora = table["lora"]
    assert lora["runs"] == 3 and lora["excluded"] == 1  # the run under CPU contention
    assert lora["step_ratio"] == 0.5 and lora["rss_ratio"] == 0.8 and lora["saved_ratio"] == 0.5
    assert lora["memory_ratio"] == 0.8 and lora["floor_memory_ratio"] == 1.6
    assert lora["floor_step_ratio"] == 1.0 and table["floor"]["floor_step_ratio"] == 1.0
    # spreads: each repeat against the reference's run of the same repeat (repeat 3 was dropped)
    assert lora["step_ratio_range"] == [1.5 / 9.0, 0.5]
    assert lora["floor_step_ratio_range"] == [0.375, 1.0]
    assert lora["step_s_range"] == [0.5, 1.5]
    assert lora["infer_ratio"] == 1.5 and lora["infer_merged_ratio"] == 1.0
    assert lora["file_ratio"] == 0.02
    text = adapter_cost.markdown(list(table.values()), rank=4)
    row = next(line for line in text.splitlines() if line.startswith("| lora ("))
    assert "LoRA r4" in row and "| 0.50x (0.17–0.50) | 1.00x (0.38–1.00) |" in row
    assert "| 1.000 (0.500–1.500) |" in row


@pytest.mark.parametrize("methods", ["full,floor,lora,houlsby,sb_lora,peft_native,dora"])
def test_tiny_run_writes_every_method_and_figure(tmp_path, methods):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "adapter_cost.py"), "--size", "tiny",
           "--methods", methods, "--repeats", "1", "--steps", "1", "--frames", "100",
           "--batch", "2", "--bf16", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "cost_tiny.json").read_text())
    assert [t["method"] for t in data["summary"]] == methods.split(",")
    # --bf16: each worker also times its steps under bf16 autocast (the fused adapters follow it)
    assert data["meta"]["bf16"] is True
    assert all(t["step_bf16_s"] > 0 and t["bf16_ratio"] > 0 for t in data["summary"])
    assert "bf16 step vs fp32" in (tmp_path / "cost_tiny.md").read_text()
    for entry in data["summary"]:
        for key in ("trainable", "total", "step_s", "peak_rss_mib", "saved_mib",
                    "step_ratio", "rss_ratio", "floor_step_ratio", "floor_memory_ratio"):  # fmt: skip
            assert entry[key] > 0, (entry["method"], key)
        # adapters are timed against the base model in their own process
        assert (entry["method"] in ("full", "floor")) != ("infer_ratio" in entry), entry
    # every run timed and measured in two processes, both importing the same libraries
    runs = data["runs"]
    assert len(runs) == len(methods.split(",")) and all("cpu_stall" in r for r in runs)
    assert max(r["baseline_rss_mib"] for r in runs) - min(r["baseline_rss_mib"] for r in runs) < 60
    floor = next(t for t in data["summary"] if t["method"] == "floor")
    full = next(t for t in data["summary"] if t["method"] == "full")
    # the floor: the base itself, only biases (of the layers LoRA adapts) and the head trained
    assert floor["total"] == full["total"] and 0 < floor["trainable"] < full["trainable"]
    lora = next(t for t in data["summary"] if t["method"] == "lora")
    assert lora["infer_merged_ratio"] > 0 and lora["infer_exported_ratio"] > 0
    assert "infer_merged_ratio" not in next(t for t in data["summary"] if t["method"] == "houlsby")
    assert 0 < lora["file_ratio"] < 1
    text = (tmp_path / "cost_tiny.md").read_text()
    assert text.count("\n") == 2 + len(methods.split(",")) and "step vs floor" in text
    assert (tmp_path / "cost_tiny.png").stat().st_size > 0


def test_whisper_run_measures_adapters_on_a_random_whisper(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "adapter_cost.py"), "--size", "whisper-test",
           "--methods", "full,lora,sb_lora", "--repeats", "1", "--steps", "1",
           "--window", "1", "--batch", "2", "--out", str(tmp_path), "--cache", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "cost_whisper-test.json").read_text())
    assert data["meta"]["window_s"] == 1.0
    table = {t["method"]: t for t in data["summary"]}
    assert set(table) == {"full", "lora", "sb_lora"}
    assert table["full"]["trainable"] == table["full"]["total"]
    # LoRA r8 on every Linear of the 2+2-layer model, nothing else trainable
    assert 0 < table["lora"]["trainable"] < 0.1 * table["lora"]["total"]
    assert table["lora"]["trainable"] == table["sb_lora"]["trainable"]
    assert table["lora"]["step_ratio"] > 0 and 0 < table["lora"]["file_ratio"] < 1


def test_quality_sweep_runs_each_configuration_and_plots(tmp_path):
    """full + a LoRA learning-rate sweep on a tiny random Whisper: one summary per
    configuration, each under its own name with its rate."""
    sys.path.insert(0, str(ROOT))
    from recipes.whisper.random_init import save_random_whisper

    source = save_random_whisper(tmp_path / "whisper")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "adapter_quality.py"), "--recipe", "whisper",
           "--methods", "full,lora", "--ranks", "2", "--lrs", "0.001,0.002",
           "--out", str(tmp_path / "out"), "--",
           f"--whisper_source={source}", f"--data_folder={tmp_path / 'corpus'}",
           f"--hub_cache={tmp_path / 'hub'}", "--corpus_size=tiny", "--real_speech=False",
           "--train_utterances=4", "--valid_utterances=2", "--test_utterances=2",
           "--batch_size=2", "--num_workers=0", "--train_window_s=2", "--eval_window_s=2"]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "quality_whisper_noisy.json").read_text())
    rows = {r["name"]: r for r in data["runs"]}
    assert set(rows) == {"full", "lora_r2_lr0.001", "lora_r2_lr0.002"}
    assert rows["full"]["trainable_pct"] == 100.0
    assert rows["lora_r2_lr0.001"]["before"] == rows["full"]["before"]  # computed once, shared
    table = (tmp_path / "out" / "quality_whisper_noisy.md").read_text().split("\n\n")
    assert len(table[0].splitlines()) == 2 + 1 + 3  # header, rule, no adaptation, three runs
    assert (tmp_path / "out" / "quality_whisper_noisy.png").stat().st_size > 0
    # the rate is chosen on the validation set: the one with the lowest validation WER
    valid = {lr: rows[f"lora_r2_lr{lr:g}"]["valid"]["WER"] for lr in (0.001, 0.002)}
    best = min(valid, key=lambda lr: (valid[lr], lr))
    assert data["chosen"] == {
        "lora_r2": {"lr": best, "valid": valid[best], "seeds": 1, "tried": [0.001, 0.002]}
    }
    assert "Chosen on the validation set" in table[1]
    # each LoRA rate against the one full run, on each test set, paired over utterances
    assert sorted((g["adapter"], g["set"]) for g in data["gaps"]) == [
        (f"lora_r2_lr{lr}", name) for lr in ("0.001", "0.002") for name in ("source", "target")
    ]
    assert all(g.get("utterances") == 2 or "no error" in g.get("error", "") for g in data["gaps"])
    # finished configurations are not run again...
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    assert again.stdout.count("done already") == 3
    # ...unless their arguments changed; and --target after "--" works like before it
    changed = [a.replace("--test_utterances=2", "--test_utterances=3") for a in cmd]
    changed[changed.index("--lrs") + 1] = "0.001"
    changed += ["--target", "noisy"]
    third = subprocess.run(changed, check=False, capture_output=True, text=True, timeout=3600)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-3000:]
    assert third.stdout.count("done already") == 0 and "lora_r2_lr0.001 (ETA" in third.stdout
    data = json.loads((tmp_path / "out" / "quality_whisper_noisy.json").read_text())
    assert len(data["runs"]) == 3  # every finished configuration of the folder is gathered

    def logged_lr(name: str) -> float:
        log = (tmp_path / "out" / "quality_whisper_noisy" / name / "train_log.txt").read_text()
        return float(log.split("lr: ")[1].split()[0])

    # a learning-rate sweep runs under its own names and passes the rate to the recipe
    assert logged_lr("lora_r2_lr0.002") == pytest.approx(2 * logged_lr("lora_r2_lr0.001"), rel=1e-2)


def _details(run: Path, errors: list[int], words: list[int], ids: list[str] | None = None):
    """A run folder whose ``details/target_after.txt`` scores utterances like ErrorRateStats."""
    ids = ids or [f"utt-{i}" for i in range(len(errors))]
    lines = [f"%WER 0.00 [ {sum(errors)} / {sum(words)}, 0 ins, 0 del, 0 sub ]", "=" * 20]
    for i, e, w in zip(ids, errors, words, strict=True):
        lines += [f"{i}, %WER {100 * e / w:.2f} [ {e} / {w}, 0 ins, 0 del, {e} sub ]", " a ", "="]
    (run / "details").mkdir(parents=True)
    (run / "details" / "target_after.txt").write_text("\n".join(lines) + "\n")
    return run


def test_paired_bootstrap_averages_seeds_and_pairs_utterances(tmp_path):
    """The adapter misses one more word than full fine-tuning on every fifth utterance: the
    gap is exact, and pairing makes its interval exclude zero although the utterances'
    own error rates vary widely; runs of other utterances are refused."""
    import paired_bootstrap

    rng = np.random.default_rng(0)
    base = rng.integers(0, 6, size=300)
    words = (base + rng.integers(4, 12, size=300)).tolist()
    extra = (np.arange(300) % 5 == 0).astype(int)
    full = [_details(tmp_path / f"full_s{s}", base.tolist(), words) for s in (1, 2)]
    # two adapter seeds whose mean is base + extra: one has 2 x extra, the other none
    lora = [_details(tmp_path / "lora_s1", (base + 2 * extra).tolist(), words),
            _details(tmp_path / "lora_s2", base.tolist(), words)]  # fmt: skip
    result = paired_bootstrap.compare(lora, full, "target", resamples=2000)
    assert result["utterances"] == 300
    assert result["full_wer"] == pytest.approx(100 * base.sum() / sum(words), abs=0.01)
    assert result["gap"] == pytest.approx(extra.sum() / base.sum(), abs=1e-4)
    assert 0 < result["low"] < result["gap"] < result["high"]
    other = _details(tmp_path / "elsewhere", base.tolist(), words, [f"x-{i}" for i in range(300)])
    with pytest.raises(ValueError, match="not comparable"):
        paired_bootstrap.compare([full[0], other], lora, "target")
    script = ROOT / "benchmarks" / "paired_bootstrap.py"
    printed = subprocess.run([sys.executable, str(script), "--adapter", *map(str, lora),
                              "--full", *map(str, full), "--resamples", "500"],
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert (
        printed.startswith("300 utterances;") and f"{100 * result['gap']:+.1f}% relative" in printed
    )


def test_quality_sweep_refuses_a_method_the_recipe_has_no_yaml_for(tmp_path):
    """Attention-only LoRA has a Conformer YAML but no Whisper one: refused before any run."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "adapter_quality.py"), "--recipe", "whisper",
           "--methods", "full,lora_attention", "--out", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 1
    assert "no YAML for lora_attention" in result.stderr
    assert "hparams/<method>_whisper.yaml" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was run or written


def test_gpu_rows_report_cuda_memory_ratios():
    rows = [
        {"method": "full", "trainable": 10, "total": 10, "step_s": 1.0, "peak_rss_mib": 900.0,
         "peak_cuda_mib": 400.0, "saved_mib": 8.0, "infer_s": 1.0, "full_file_bytes": 1000},
        {"method": "lora", "trainable": 1, "total": 11, "step_s": 0.5, "peak_rss_mib": 900.0,
         "peak_cuda_mib": 100.0, "saved_mib": 4.0, "infer_s": 1.0, "full_file_bytes": 1000},
    ]  # fmt: skip
    table = adapter_cost.summarise(rows, ["full", "lora"])
    assert table[1]["cuda_ratio"] == 0.25 and table[1]["rss_ratio"] == 1.0
    assert "| 0.25x |" in adapter_cost.markdown(table).splitlines()[-1]  # device memory shown


def test_layer_benchmark_times_every_variant_against_the_plain_layer(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "layer_cost.py"), "--in", "32", "--out",
           "48", "--tokens", "64", "--repeats", "2", "--output", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "layer_32x48.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["full", "lora", "poollora", "dora", "houlsby", "sb_lora", "peft_lora"]
    assert rows["full"]["forward_ratio"] == rows["full"]["train_ratio"] == 1.0
    assert rows["full"]["trainable"] == 32 * 48 + 48 and rows["lora"]["trainable"] == 8 * (32 + 48)
    # PoolLoRA keeps the pooled input (half of it) where full fine-tuning keeps the input
    assert rows["poollora"]["saved_ratio"] == pytest.approx(0.5)
    assert all(r["forward_ms"] > 0 and r["train_ms"] > 0 for r in rows.values())
    assert (tmp_path / "layer_32x48.md").read_text().count("\n") == 2 + len(rows)
    assert (tmp_path / "layer_32x48.png").stat().st_size > 0


def test_raw_parameter_benchmark_compares_the_same_function_two_ways(tmp_path):
    import raw_param_cost

    raw_param_cost.main(
        ["--dim", "16", "--frames", "5", "--repeats", "2", "--output", str(tmp_path)]
    )
    data = json.loads((tmp_path / "raw_param_cost.json").read_text())
    rows = {(r["model"], r["variant"]): r for r in data["rows"]}
    assert set(rows) == {
        (m, v) for m in ("lstm", "attention") for v in ("frozen", "ours", "parametrize")
    }
    # ours keeps the base's state-dict keys; parametrize renames every adapted weight
    assert rows[("lstm", "ours")]["base_keys_renamed"] == 0
    assert rows[("lstm", "parametrize")]["base_keys_renamed"] == 8  # 2 layers x 2 directions x 2
    assert rows[("attention", "parametrize")]["base_keys_renamed"] == 1
    assert all(r["max_diff_ours_vs_parametrize"] < 1e-6 for r in rows.values())
    assert rows[("lstm", "frozen")]["train_vs_frozen"] == 1.0
    # and the adapters do change the function (B is non-zero), so agreeing means something
    import torch

    base = raw_param_cost.Recurrent(16)
    x = torch.randn(2, 5, 16)
    ours = raw_param_cost.build("ours", base, "rnn.weight_*", 4)
    assert not torch.allclose(ours(x), base(x), atol=1e-5)
    assert (tmp_path / "raw_param_cost.png").stat().st_size > 0


def test_serving_benchmark_serves_mixed_batches_as_switching_would(tmp_path):
    """Every serving configuration on a tiny random Whisper: positive throughput, and the
    mixed batch of 8 adapter sets transcribes as one sub-batch per set does."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--size", "whisper-test",
           "--window", "1", "--tokens", "4", "--repeats", "1", "--threads", "1",
           "--out", str(tmp_path), "--cache", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "serving.json").read_text())
    assert data["meta"]["threads"] == 1 and data["meta"]["adapter_sets"] == 8
    counts = (1, 2, 4, 8)
    expected = ["merged", "unmerged-single", *(f"mixed-{n}" for n in counts),
                *(f"switching-{n}" for n in counts)]  # fmt: skip
    table = {t["config"]: t for t in data["summary"]}
    assert list(table) == expected
    assert all(t["utt_s"] > 0 and t["ratio"] > 0 for t in table.values())
    assert table["merged"]["ratio"] == 1.0
    checks = data["checks"]
    assert checks["outputs_equal"] is True and checks["outputs_equal_n"] == 8
    assert checks["tokens_decoded"] == [4]  # end-of-text never stops a hypothesis early
    assert checks["changed_vs_base"] > 0  # the adapter sets do change transcripts
    assert (tmp_path / "serving.md").read_text().count("\n") == 2 + len(expected)
    assert (tmp_path / "serving.png").stat().st_size > 0


def test_figures_are_drawn_from_the_benchmark_json_and_stay_small(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rows = [
        {"method": m, "trainable": t, "total": 10, "step_s": s * (1 + 0.1 * rep),
         "peak_rss_mib": mem, "saved_mib": 1.0, "full_file_bytes": 100, "repeat": rep,
         "step_bf16_s": s / 2}
        for rep in range(3)
        for m, t, s, mem in (("full", 10, 2.0, 100.0), ("floor", 1, 1.5, 70.0), ("lora", 2, 1.6, 72.0))
    ]  # fmt: skip
    table = adapter_cost.summarise(rows, ["full", "floor", "lora"])
    meta = {"size": "20m", "device": "cpu", "repeats": 3}
    (results / "cost_20m.json").write_text(json.dumps({"meta": meta, "summary": table}))
    (results / "bf16").mkdir()  # a run kept in a folder of its own
    (results / "bf16" / "cost_20m.json").write_text(json.dumps({"meta": meta, "summary": table}))
    for target in ("noisy", "voices"):
        runs = [
            {"method": m, "trainable_params": p, "after": {"target": {"WER": w}},
             "before": {"target": {"WER": 80.0}}}
            for m, p, w in (("full", 100, 40.0), ("lora", 1, 45.0), ("lora", 2, 42.0))
        ]  # fmt: skip
        data = {"meta": {"recipe": "whisper", "target": target}, "runs": runs}
        (results / f"quality_whisper_{target}.json").write_text(json.dumps(data))
    serving = [{"config": c, "utt_s": u, "min_utt_s": u - 0.1, "max_utt_s": u + 0.1,
                "ratio": u / 2.0} for c, u in (("merged", 2.0), ("mixed-4", 1.6))]  # fmt: skip
    (results / "serving.json").write_text(json.dumps({"summary": serving}))
    for name, wers in (("full", (44.0, 40.0)), ("lora_r4", (50.0, 43.0))):
        run = results / "curve" / "quality_whisper_noisy" / name
        run.mkdir(parents=True)
        (run / "train_log.txt").write_text("".join(
            f"epoch: {e}, lr: 1e-3 - train loss: 1.0 - valid loss: 1.0, valid WER: {w}\n"
            for e, w in enumerate(wers, start=1)))  # fmt: skip
    study = tmp_path / "study" / "tiny.en"  # a quality study: gaps to full fine-tuning
    study.mkdir(parents=True)
    gap = {"adapter": "lora_r4", "full": "full", "set": "target", "seeds": [3, 3],
           "gap": 0.08, "low": 0.02, "high": 0.15}  # fmt: skip
    (study / "quality_whisper_noisy.json").write_text(
        json.dumps({"meta": {"target": "noisy"}, "runs": [], "gaps": [gap]})
    )
    out = tmp_path / "figures"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "figures.py"), "--results", str(results),
           "--out", str(out), "--gaps", str(study)]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "cost_20m.png",
        "cost_20m_bf16.png",
        "curve_whisper_noisy.png",
        "gap_whisper.png",
        "quality_whisper.png",
        "serving.png",
    ]
    assert all(0 < (out / p).stat().st_size <= 200_000 for p in pngs)
    assert (out / "cost_20m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --gaps alone draws the quality study's figure only
    alone = tmp_path / "alone"
    subprocess.run([*cmd[:2], "--out", str(alone), "--gaps", str(study)], check=True,
                   capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert sorted(p.name for p in alone.glob("*.png")) == ["gap_whisper.png"]
    # nothing to draw is an error, not an empty success
    empty = subprocess.run([*cmd[:3], str(tmp_path / "none"), *cmd[4:6]], check=False,
                           capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert empty.returncode != 0 and "No benchmark JSON" in empty.stderr


def test_lora_overhead_profile_accounts_for_layers_and_saved_inputs(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "lora_overhead.py"), "--size", "tiny",
           "--steps", "2", "--repeats", "2", "--frames", "200", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "lora_overhead_tiny.json").read_text())
    split = data["step_split"]
    assert set(split) == {"floor", "lora"}
    assert all(split[m][p]["min"] <= split[m][p]["median"] <= split[m][p]["max"]
               for m in split for p in ("forward", "backward", "optimizer"))  # fmt: skip
    # every LoRA layer of the tiny Conformer, grouped by shape: 8 Linear layers in all
    assert sum(row["layers"] for row in data["layers"]) == 8
    assert all(row["floor"] > 0 and row["lora"] > 0 and row["rank_r"] > 0 for row in data["layers"])
    # LoRA keeps more for backward than the floor, and the inputs of its layers explain most of it
    saved = data["saved"]
    extra = saved["lora_mib"] - saved["floor_mib"]
    assert extra > 0 and 0.8 * extra <= saved["inputs_not_kept_mib"] <= extra + 1e-6
    assert "LoRA − floor" in (tmp_path / "lora_overhead_tiny.md").read_text()


def test_deploy_speed_pads_a_short_clips_audio_to_the_window_unless_told_not_to(tmp_path):
    import deploy_speed
    import soundfile

    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    soundfile.write(short, np.full(8000, 0.25, dtype=np.float32), 16000)
    soundfile.write(long, np.full(40000, 0.25, dtype=np.float32), 16000)
    padded = deploy_speed.padded_audio(str(short), 32000, "audio")
    assert padded.shape == (32000,) and np.all(padded[8000:] == 0)
    assert np.allclose(padded[:8000], 0.25, atol=1e-4)  # the clip itself is untouched
    assert deploy_speed.padded_audio(str(short), 32000, "features").shape == (8000,)
    assert deploy_speed.padded_audio(str(long), 32000, "audio").shape == (40000,)


def test_deploy_speed_serves_one_run_six_ways_and_refuses_what_it_cannot_measure(tmp_path):
    """The serving-speed benchmark end to end on a tiny random Whisper run with a LoRA
    (three short synthetic files, one timed pass): six configurations, each with a
    positive throughput, its own peak memory and a WER; no timing is asserted."""
    import math

    import deploy_speed

    cmd = [sys.executable, str(ROOT / "benchmarks" / "deploy_speed.py"), "--smoke",
           "--repeats", "1", "--threads", "1", "--output-dir", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    table = {t["config"]: t for t in data["summary"]}
    assert list(table) == [
        "merged", "unmerged", "mixed", "ct2-float32", "ct2-int8", "ct2-int8-batched"
    ]  # fmt: skip
    assert data["meta"]["recordings"] == 3 and data["meta"]["threads"] == 1
    for entry in table.values():
        assert math.isfinite(entry["audio_s_per_s"]) and entry["audio_s_per_s"] > 0
        assert math.isfinite(entry["peak_rss_mib"]) and entry["peak_rss_mib"] > 0
        assert entry["rtf"] > 0 and entry["runs"] + entry["excluded"] == 1
        assert math.isfinite(entry["wer"]) and set(entry["wer_by_manifest"]) == {
            "smoke_a", "smoke_b"
        }  # fmt: skip
    # merged and unmerged serve the same adapter: the same words (mixed: half on the base);
    # faster-whisper on clips padded to the window (the default) gives ours in float32
    assert data["transcripts"]["merged"] == data["transcripts"]["unmerged"]
    assert data["meta"]["pad"] == "audio"
    assert data["transcripts"]["ct2-float32"] == data["transcripts"]["merged"]
    assert (
        table["merged"]["speedup"] == 1.0 and "int8_batched_vs_merged_throughput" in data["checks"]
    )
    assert "int8 / merged throughput" in result.stdout
    assert (tmp_path / "out" / "results.md").read_text().count("\n") == 2 + 6
    # an unfinished run (no inference folder yet) and a missing manifest are refused
    (tmp_path / "unfinished" / "save").mkdir(parents=True)
    with pytest.raises(deploy_speed.BenchmarkError, match="the run is not finished"):
        deploy_speed.main(["--run", str(tmp_path / "unfinished")])
    run = str(tmp_path / "out" / "smoke" / "run")
    with pytest.raises(deploy_speed.BenchmarkError, match="missing manifest.*real_asterisk"):
        deploy_speed.main(["--run", run, "--manifests", str(tmp_path / "real_asterisk.csv")])
    # nothing decoded by a configuration: no WER is reported
    with pytest.raises(deploy_speed.BenchmarkError, match="ct2-int8 decoded nothing"):
        deploy_speed.check_decoded({"merged": ["a"], "ct2-int8": ["", " "]})
