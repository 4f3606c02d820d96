#!/usr/bin/env python3
"""Quality of each adapter against full fine-tuning: WER vs trainable parameters.

Runs a recipe once per configuration (method, rank) with the same data, seed
and number of updates, each in its own output folder, then gathers their
``summary.json`` into one table and plots. Error rates before adaptation are
computed once and shared (the recipes' ``before_cache``).

    python benchmarks/adapter_quality.py --recipe whisper --methods full,lora --ranks 4,8,16
    python benchmarks/adapter_quality.py --methods full,lora,poollora,dora,houlsby,peft --ranks 4,8,16
    python benchmarks/adapter_quality.py --recipe whisper --quick      # a few minutes
    python benchmarks/adapter_quality.py --methods lora --ranks 4 --lrs 0.001,0.004  # lr sweep
    python benchmarks/adapter_quality.py --recipe asr --methods full,lora,poollora,dora,houlsby

A configuration whose ``summary.json`` already exists is not run again
(``--rerun`` forces it), so an interrupted sweep resumes. Extra arguments
after ``--`` go to every run (e.g. ``-- --target voices``).

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from adapter_cost import write_results

RECIPES = {
    "whisper": ROOT / "recipes" / "whisper" / "train.py",
    "asr": ROOT / "recipes" / "asr" / "train.py",
}
METHODS = ("full", "lora", "poollora", "dora", "houlsby", "peft")
RANKED = {"lora", "poollora", "dora", "peft"}  # methods with a rank (and alpha = 2 x rank)
QUICK = {
    "whisper": ["--train_utterances=48", "--valid_utterances=8", "--test_utterances=24",
                "--max_asterisk=12", "--batch_size=8"],
    "asr": ["--number_of_epochs=2"],
}  # fmt: skip


Config = tuple[str, "int | None", "float | None"]  # method, rank, learning rate


def configurations(
    methods: list[str],
    ranks: list[int],
    sweep: set[str],
    rank: int = 8,
    lrs: list[float] | None = None,
) -> list[Config]:
    """(method, rank, lr): every rank (and every lr of ``lrs``) for swept methods.

    ``None`` means the recipe's default: no rank for unranked methods, the
    YAML's learning rate when ``lrs`` is not given.

    Example
    -------
    >>> configurations(["full", "lora", "dora"], [4, 16], sweep={"lora"})
    [('full', None, None), ('lora', 4, None), ('lora', 16, None), ('dora', 8, None)]
    >>> configurations(["lora"], [4], sweep={"lora"}, lrs=[1e-3, 4e-3])
    [('lora', 4, 0.001), ('lora', 4, 0.004)]
    """
    out: list[Config] = []
    for method in methods:
        swept = method in sweep
        rates = (lrs or [None]) if swept else [None]
        if method not in RANKED:
            out += [(method, None, lr) for lr in rates]
        else:
            out += [(method, r, lr) for r in (ranks if swept else [rank]) for lr in rates]
    return out


def run_name(method: str, rank: int | None, lr: float | None = None) -> str:
    """Folder name of a configuration, e.g. ``lora_r8`` or ``lora_r4_lr0.004``."""
    name = method if rank is None else f"{method}_r{rank}"
    return name if lr is None else f"{name}_lr{lr:g}"


def gather(folder: Path, configs: list[Config]) -> list[dict]:
    """One row per finished configuration, from its ``summary.json``."""
    rows = []
    for method, rank, lr in configs:
        path = folder / run_name(method, rank, lr) / "summary.json"
        if path.is_file():
            summary = json.loads(path.read_text())
            rows.append({"name": run_name(method, rank, lr), "rank": rank, "lr": lr, **summary})
    return rows


def markdown(rows: list[dict]) -> str:
    """WER/CER after adaptation per test set, with trainable share and train time.

    Example
    -------
    >>> row = {"name": "lora_r8", "trainable_params": 10, "trainable_pct": 1.0,
    ...        "train_time_s": 5.0, "before": {"target": {"WER": 50.0, "CER": 20.0}},
    ...        "after": {"target": {"WER": 30.0, "CER": 10.0}}}
    >>> print(markdown([row]).splitlines()[-1])
    | lora_r8 | 10 (1.000%) | 5 | 30.0 / 10.0 |
    >>> print(markdown([row]).splitlines()[2])
    | no adaptation | 0 (0%) | - | 50.0 / 20.0 |
    """
    sets: dict[str, None] = {}
    for row in rows:
        sets.update(dict.fromkeys(row.get("after", {})))
    header = ["configuration", "trainable params", "train time (s)"]
    header += [f"{name} WER / CER" for name in sets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(result: dict | None) -> str:
        return f"{result['WER']:.1f} / {result['CER']:.1f}" if result else "-"

    before = next((r["before"] for r in rows if r.get("before")), None)
    if before:
        cells = ["no adaptation", "0 (0%)", "-", *(cell(before.get(n)) for n in sets)]
        lines.append("| " + " | ".join(cells) + " |")
    for row in rows:
        cells = [
            row["name"],
            f"{row['trainable_params']:,} ({row['trainable_pct']:.3f}%)",
            f"{row.get('train_time_s', 0):.0f}",
            *(cell(row.get("after", {}).get(n)) for n in sets),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """WER after adaptation vs trainable parameters (log x), one panel per test set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(n for r in rows for n in r.get("after", {})))
    if not sets:
        return
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 4), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    before = next((r["before"] for r in rows if r.get("before")), {})
    for ax, name in zip(axes[0], sets, strict=True):
        for method in methods:
            points = sorted(
                (r["trainable_params"], r["after"][name]["WER"], r["name"])
                for r in rows
                if r["method"] == method and name in r.get("after", {})
            )
            xs, ys, labels = zip(*points, strict=True) if points else ((), (), ())
            ax.plot(xs, ys, marker="o", label=method)
            for x, y, label in zip(xs, ys, labels, strict=True):
                if label != method:
                    ax.annotate(label[len(method) + 1 :], (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")  # fmt: skip
        if name in before:
            ax.axhline(before[name]["WER"], color="grey", ls="--", lw=0.8, label="no adaptation")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("WER (%)")
        ax.set_title(name)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="whisper")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--ranks", default="8", help="comma-separated ranks of the sweep")
    parser.add_argument("--sweep", default="lora", help="methods run at every rank of --ranks")
    parser.add_argument("--rank", type=int, default=8, help="rank of the other ranked methods")
    parser.add_argument("--lrs", default="", help="comma-separated learning rates of the sweep")
    parser.add_argument("--target", default="noisy")
    parser.add_argument("--quick", action="store_true", help="small subsets: a few minutes")
    parser.add_argument("--rerun", action="store_true", help="rerun finished configurations")
    parser.add_argument("--out", default="results/benchmarks")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    ranks = [int(r) for r in args.ranks.split(",") if r]
    lrs = [float(x) for x in args.lrs.split(",") if x]
    configs = configurations(methods, ranks, set(args.sweep.split(",")), args.rank, lrs)

    tag = f"{args.recipe}_{args.target}" + ("_quick" if args.quick else "")
    runs = Path(args.out) / f"quality_{tag}"
    runs.mkdir(parents=True, exist_ok=True)
    common = [f"--target={args.target}"]
    if args.recipe == "whisper":  # runs share the error rates before adaptation
        common.append(f"--before_cache={runs / 'before.json'}")
    common += QUICK[args.recipe] if args.quick else []
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started, done = time.time(), 0
    for i, (method, rank, lr) in enumerate(configs):
        name = run_name(method, rank, lr)
        folder = runs / name
        if (folder / "summary.json").is_file() and not args.rerun:
            print(f"[{i + 1}/{len(configs)}] {name}: done already", flush=True)
            continue
        eta = (time.time() - started) / done * (len(configs) - i) if done else float("nan")
        print(f"[{i + 1}/{len(configs)}] {name} (ETA {eta:.0f} s)", flush=True)
        ranked = [f"--rank={rank}", f"--alpha={2 * rank}"] if rank is not None else []
        ranked += [f"--lr={lr:g}"] if lr is not None else []
        hparams = ROOT / "hparams" / f"{method}_{args.recipe}.yaml"
        cmd = [sys.executable, str(RECIPES[args.recipe]), str(hparams), *common, *ranked,
               f"--output_folder={folder}", *extra]  # fmt: skip
        proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        done += 1

    rows = gather(runs, configs)
    meta = {"recipe": args.recipe, "target": args.target, "quick": args.quick, "extra": extra,
            "cpus": os.cpu_count()}  # fmt: skip
    data = {"meta": meta, "runs": rows}
    write_results(Path(args.out), f"quality_{tag}", data, markdown(rows), lambda p: plot(rows, p))


if __name__ == "__main__":
    main()
