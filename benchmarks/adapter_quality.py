#!/usr/bin/env python3
"""Quality of each adapter against full fine-tuning: WER vs trainable parameters.

Runs a recipe once per configuration (method, rank, learning rate, seed) with
the same data and number of updates, each in its own output folder, then
gathers every finished ``summary.json`` of that folder into one table and plots.
Error rates before adaptation are computed once and shared (``before_cache``).

    python benchmarks/adapter_quality.py --recipe whisper --methods full,lora --ranks 4,8,16
    python benchmarks/adapter_quality.py --methods full,lora,poollora,dora,houlsby,peft --ranks 4,8,16
    python benchmarks/adapter_quality.py --recipe whisper --quick      # a few minutes
    python benchmarks/adapter_quality.py --recipe asr --methods full,lora,poollora,dora,houlsby

Learning rates are chosen on the validation set, never on the test sets:
``--lrs`` sweeps every swept method (``--sweep``) and ``--full-lrs`` full
fine-tuning; ``--validation-only`` skips the test sets (the sweep's runs only
train and validate), and the table's ``chosen`` lists, per method and rank, the
rate with the best validation figure::

    python benchmarks/adapter_quality.py --methods full,lora --ranks 4 --lrs 0.001,0.002,0.004,0.008 \
        --full-lrs 2.5e-5,5e-5,1e-4,2e-4 --validation-only --target voices -- --valid_utterances=100

``--seeds 1234,1235,1236`` repeats each configuration (folders ``..._s<seed>``);
the table then adds the mean and range over seeds. A configuration whose
``summary.json`` exists with the same arguments is not run again (``--rerun``
forces it); one finished with other arguments is run afresh. Extra arguments
after ``--`` go to every run (``--target`` there is the same as before ``--``).

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

from measure import write_results
from paired_bootstrap import compare

RECIPES = {
    "whisper": ROOT / "recipes" / "whisper" / "train.py",
    "asr": ROOT / "recipes" / "asr" / "train.py",
}
METHODS = ("full", "lora", "lora_attention", "poollora", "dora", "houlsby", "peft")
RANKED = {"lora", "lora_attention", "poollora", "dora", "peft"}  # rank, and alpha = 2 x rank
QUICK = {
    "whisper": ["--train_utterances=48", "--valid_utterances=8", "--test_utterances=24",
                "--max_asterisk=12", "--batch_size=8"],
    "asr": ["--number_of_epochs=2"],
}  # fmt: skip


Config = tuple[str, "int | None", "float | None", "int | None"]  # method, rank, lr, seed


def hparams_file(method: str, recipe: str) -> Path:
    """The YAML a method runs with in a recipe, e.g. ``hparams/lora_asr.yaml``."""
    return ROOT / "hparams" / f"{method}_{recipe}.yaml"


def configurations(
    methods: list[str],
    ranks: list[int],
    sweep: set[str],
    rank: int = 8,
    lrs: list[float] | None = None,
    full_lrs: list[float] | None = None,
    seeds: list[int] | None = None,
) -> list[Config]:
    """(method, rank, lr, seed): every rank (and every lr of ``lrs``) for swept methods.

    ``None`` means the recipe's default: no rank for unranked methods, the
    YAML's learning rate when no rates are given, the YAML's seed.

    Example
    -------
    >>> configurations(["full", "lora", "dora"], [4, 16], sweep={"lora"})
    [('full', None, None, None), ('lora', 4, None, None), ('lora', 16, None, None), ('dora', 8, None, None)]
    >>> configurations(["full", "lora"], [4], {"lora"}, lrs=[1e-3], full_lrs=[5e-5], seeds=[1, 2])
    [('full', None, 5e-05, 1), ('full', None, 5e-05, 2), ('lora', 4, 0.001, 1), ('lora', 4, 0.001, 2)]
    """
    out: list[Config] = []
    for method in methods:
        swept = method in sweep
        rates = (full_lrs if method == "full" else lrs if swept else None) or [None]
        method_ranks = [None] if method not in RANKED else ranks if swept else [rank]
        out += [
            (method, r, lr, seed)
            for r in method_ranks
            for lr in rates
            for seed in (seeds or [None])
        ]
    return out


def run_name(
    method: str, rank: int | None, lr: float | None = None, seed: int | None = None
) -> str:
    """Folder name of a configuration, e.g. ``lora_r8``, ``lora_r4_lr0.004`` or ``full_s1235``."""
    name = method if rank is None else f"{method}_r{rank}"
    name = name if lr is None else f"{name}_lr{lr:g}"
    return name if seed is None else f"{name}_s{seed}"


SETTINGS = "benchmark_args.json"


def gather(folder: Path) -> list[dict]:
    """One row per finished configuration of ``folder`` (every run ever made there), by name."""
    rows = []
    for path in sorted(folder.glob(f"*/{SETTINGS}")):
        summary = path.parent / "summary.json"
        if summary.is_file():
            settings = json.loads(path.read_text())
            rows.append({"name": path.parent.name, **settings["config"],
                         **json.loads(summary.read_text())})  # fmt: skip
    return rows


def chosen_rates(rows: list[dict], metric: str = "WER") -> dict[str, dict]:
    """Per method and rank, the learning rate with the best validation figure (lowest),
    averaged over the seeds run at that rate: one lucky seed does not choose a rate.

    Example
    -------
    >>> rows = [{"method": "lora", "rank": 4, "lr": lr, "valid": {"WER": w}}
    ...         for lr, w in ((0.001, 30.0), (0.004, 25.0), (0.008, 27.0))]
    >>> chosen_rates(rows)
    {'lora_r4': {'lr': 0.004, 'valid': 25.0, 'seeds': 1, 'tried': [0.001, 0.004, 0.008]}}
    >>> seeds = [{"method": "full", "rank": None, "lr": lr, "valid": {"WER": w}}
    ...          for lr, w in ((1e-4, 40.0), (1e-4, 42.0), (2e-4, 30.0), (2e-4, 54.0))]
    >>> chosen_rates(seeds)["full"]  # 41.0 against 42.0 on average, despite the 30.0
    {'lr': 0.0001, 'valid': 41.0, 'seeds': 2, 'tried': [0.0001, 0.0002]}
    """
    groups: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        if row.get("lr") is not None and metric in row.get("valid", {}):
            by_rate = groups.setdefault(run_name(row["method"], row["rank"]), {})
            by_rate.setdefault(row["lr"], []).append(row["valid"][metric])
    chosen = {}
    for name, by_rate in groups.items():
        means = {lr: sum(values) / len(values) for lr, values in by_rate.items()}
        lr = min(means, key=lambda rate: (means[rate], rate))
        chosen[name] = {"lr": lr, "valid": means[lr], "seeds": len(by_rate[lr]),
                        "tried": sorted(by_rate)}  # fmt: skip
    return chosen


def _spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.1f} ({min(values):.1f}–{max(values):.1f})"


def markdown(rows: list[dict]) -> str:
    """WER/CER after adaptation per test set, validation WER, trainable share and train time;
    then, for configurations run with several seeds, the mean WER and its range.

    Example
    -------
    >>> row = {"name": "lora_r8", "trainable_params": 10, "trainable_pct": 1.0,
    ...        "train_time_s": 5.0, "before": {"target": {"WER": 50.0, "CER": 20.0}},
    ...        "after": {"target": {"WER": 30.0, "CER": 10.0}}, "valid": {"WER": 28.0}}
    >>> print(markdown([row]).splitlines()[-1])
    | lora_r8 | 10 (1.000%) | 5 | 28.0 | 30.0 / 10.0 |
    >>> print(markdown([row]).splitlines()[2])
    | no adaptation | 0 (0%) | - | - | 50.0 / 20.0 |
    >>> seeds = [{**row, "name": f"lora_r8_s{i}", "seed": i, "method": "lora", "rank": 8,
    ...           "lr": None, "after": {"target": {"WER": w, "CER": 1.0}}}
    ...          for i, w in ((1, 30.0), (2, 33.0))]
    >>> print(markdown(seeds).splitlines()[-1])
    | lora_r8 (2 seeds) | 10 (1.000%) | 5 | 28.0 (28.0–28.0) | 31.5 (30.0–33.0) |
    """
    sets: dict[str, None] = {}
    for row in rows:
        sets.update(dict.fromkeys(row.get("after", {})))
    header = ["configuration", "trainable params", "train time (s)", "valid WER"]
    header += [f"{name} WER / CER" for name in sets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(result: dict | None) -> str:
        return f"{result['WER']:.1f} / {result['CER']:.1f}" if result else "-"

    def valid(row: dict) -> str:
        return f"{row['valid']['WER']:.1f}" if "WER" in row.get("valid", {}) else "-"

    before = next((r["before"] for r in rows if r.get("before")), None)
    if before:
        cells = ["no adaptation", "0 (0%)", "-", "-", *(cell(before.get(n)) for n in sets)]
        lines.append("| " + " | ".join(cells) + " |")
    for row in rows:
        cells = [
            row["name"],
            f"{row['trainable_params']:,} ({row['trainable_pct']:.3f}%)",
            f"{row.get('train_time_s', 0):.0f}",
            valid(row),
            *(cell(row.get("after", {}).get(n)) for n in sets),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("seed") is not None:
            key = run_name(row["method"], row.get("rank"), row.get("lr"))
            groups.setdefault(key, []).append(row)
    for name, group in groups.items():
        if len(group) < 2:
            continue
        first = group[0]
        cells = [
            f"{name} ({len(group)} seeds)",
            f"{first['trainable_params']:,} ({first['trainable_pct']:.3f}%)",
            f"{sum(r.get('train_time_s', 0) for r in group) / len(group):.0f}",
            _spread([r["valid"]["WER"] for r in group]) if all("WER" in r.get("valid", {})
                                                               for r in group) else "-",
            *(_spread([r["after"][n]["WER"] for r in group])
              if all(n in r.get("after", {}) for r in group) else "-" for n in sets),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gaps(rows: list[dict], runs: Path) -> list[dict]:
    """Each adapter configuration against full fine-tuning on every test set both scored:
    mean-of-seeds WER and the relative gap with its paired bootstrap interval
    (:mod:`paired_bootstrap`). Only when the folder holds one full configuration.
    """
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(run_name(row["method"], row.get("rank"), row.get("lr")), []).append(row)
    full = [name for name, group in groups.items() if group[0]["method"] == "full"]
    if len(full) != 1:
        return []
    out = []
    for name, group in groups.items():
        if name == full[0]:
            continue
        for test_set in group[0].get("after", {}):
            runs_a = [runs / r["name"] for r in group]
            runs_f = [runs / r["name"] for r in groups[full[0]]]
            if not all((run / "details" / f"{test_set}_after.txt").is_file()
                       for run in runs_a + runs_f):  # fmt: skip
                continue
            found = {"adapter": name, "full": full[0], "set": test_set,
                     "seeds": [len(runs_a), len(runs_f)]}  # fmt: skip
            try:
                found.update(compare(runs_a, runs_f, test_set))
            except ValueError as error:  # e.g. runs of the folder made on other test sets
                found["error"] = str(error)
            out.append(found)
    return out


def gap_lines(found: list[dict]) -> str:
    """The gaps as sentences under the table.

    Example
    -------
    >>> print(gap_lines([{"adapter": "lora_r4", "full": "full", "set": "target", "seeds": [3, 3],
    ...     "utterances": 300, "adapter_wer": 40.0, "full_wer": 38.0, "gap": 0.0526,
    ...     "low": 0.01, "high": 0.1}]))
    - lora_r4 vs full on target (300 utterances, 3/3 seeds): WER 40.00 vs 38.00, +5.3% relative (95% paired bootstrap +1.0% to +10.0%)
    """
    return "\n".join(
        f"- {g['adapter']} vs {g['full']} on {g['set']}: not compared ({g['error']})"
        if "error" in g
        else f"- {g['adapter']} vs {g['full']} on {g['set']} ({g['utterances']} utterances, "
        f"{g['seeds'][0]}/{g['seeds'][1]} seeds): WER {g['adapter_wer']:.2f} vs "
        f"{g['full_wer']:.2f}, {100 * g['gap']:+.1f}% relative (95% paired bootstrap "
        f"{100 * g['low']:+.1f}% to {100 * g['high']:+.1f}%)"
        for g in found
    )


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


def _take_target(extra: list[str], default: str) -> tuple[str, list[str]]:
    """``--target`` given after ``--`` (either form) instead of before it.

    Example
    -------
    >>> _take_target(["--rank=4", "--target", "voices"], "noisy")
    ('voices', ['--rank=4'])
    """
    target, rest, skip = default, [], False
    for i, arg in enumerate(extra):
        if skip:
            skip = False
        elif arg == "--target" and i + 1 < len(extra):
            target, skip = extra[i + 1], True
        elif arg.startswith("--target="):
            target = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return target, rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="whisper")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--ranks", default="8", help="comma-separated ranks of the sweep")
    parser.add_argument("--sweep", default="lora", help="methods run at every rank of --ranks")
    parser.add_argument("--rank", type=int, default=8, help="rank of the other ranked methods")
    parser.add_argument("--lrs", default="", help="learning rates of the swept methods")
    parser.add_argument("--full-lrs", default="", help="learning rates of full fine-tuning")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the YAML's)")
    parser.add_argument("--validation-only", action="store_true",
                        help="train and validate only: no test set (learning-rate sweeps)")  # fmt: skip
    parser.add_argument("--target", default="noisy")
    parser.add_argument("--quick", action="store_true", help="small subsets: a few minutes")
    parser.add_argument("--rerun", action="store_true", help="rerun finished configurations")
    parser.add_argument("--out", default="results/benchmarks")
    args, extra = parser.parse_known_args()
    target, extra = _take_target([a for a in extra if a != "--"], args.target)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    no_yaml = [m for m in methods if not hparams_file(m, args.recipe).is_file()]
    if no_yaml:
        raise SystemExit(
            f"The {args.recipe} recipe has no YAML for {', '.join(no_yaml)} (looked for "
            f"hparams/<method>_{args.recipe}.yaml); drop it from --methods."
        )

    def numbers(text: str, kind=float) -> list:
        return [kind(x) for x in text.split(",") if x]

    configs = configurations(
        methods, numbers(args.ranks, int), set(args.sweep.split(",")), args.rank,
        numbers(args.lrs), numbers(args.full_lrs), numbers(args.seeds, int),
    )  # fmt: skip

    tag = f"{args.recipe}_{target}" + ("_quick" if args.quick else "")
    runs = Path(args.out) / f"quality_{tag}"
    runs.mkdir(parents=True, exist_ok=True)
    common = [f"--target={target}"]
    if args.recipe == "whisper":  # runs share the error rates before adaptation
        common.append(f"--before_cache={runs / 'before.json'}")
    common += QUICK[args.recipe] if args.quick else []
    if args.validation_only:
        common += ["--test_sets=null"] + (
            ["--real_speech=False"] if args.recipe == "whisper" else []
        )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started, done = time.time(), 0
    for i, (method, rank, lr, seed) in enumerate(configs):
        name = run_name(method, rank, lr, seed)
        folder = runs / name
        ranked = [f"--rank={rank}", f"--alpha={2 * rank}"] if rank is not None else []
        ranked += [f"--lr={lr:g}"] if lr is not None else []
        ranked += [f"--seed={seed}"] if seed is not None else []
        arguments = [*common, *ranked, *extra]
        settings = {"config": {"method": method, "rank": rank, "lr": lr, "seed": seed},
                    "arguments": arguments}  # fmt: skip
        stamp = folder / SETTINGS
        same = stamp.is_file() and json.loads(stamp.read_text()) == settings
        if (folder / "summary.json").is_file() and same and not args.rerun:
            print(f"[{i + 1}/{len(configs)}] {name}: done already", flush=True)
            continue
        # A run cut short with the same arguments resumes from its checkpoint; one made with
        # other arguments (or of unknown origin) starts afresh.
        fresh = ["--fresh_start=True"] if folder.exists() and (args.rerun or not same) else []
        folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(settings, indent=1) + "\n")
        eta = (time.time() - started) / done * (len(configs) - i) if done else float("nan")
        print(f"[{i + 1}/{len(configs)}] {name} (ETA {eta:.0f} s)", flush=True)
        cmd = [sys.executable, str(RECIPES[args.recipe]), str(hparams_file(method, args.recipe)),
               *arguments, *fresh,
               f"--output_folder={folder}"]  # fmt: skip
        proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        done += 1

    rows = gather(runs)
    meta = {"recipe": args.recipe, "target": target, "quick": args.quick, "extra": extra,
            "validation_only": args.validation_only, "cpus": os.cpu_count()}  # fmt: skip
    data = {"meta": meta, "runs": rows, "chosen": chosen_rates(rows), "gaps": gaps(rows, runs)}
    table = markdown(rows)
    if data["chosen"]:
        table += "\n\nChosen on the validation set (lowest WER): " + ", ".join(
            f"{name} lr {c['lr']:g} (valid WER {c['valid']:.1f}"
            + (f", mean of {c['seeds']} seeds" if c["seeds"] > 1 else "")
            + f"; tried {', '.join(f'{x:g}' for x in c['tried'])})"
            for name, c in data["chosen"].items()
        )
    if data["gaps"]:
        table += "\n\nAgainst full fine-tuning, mean of seeds:\n" + gap_lines(data["gaps"])
    write_results(Path(args.out), f"quality_{tag}", data, table, lambda p: plot(rows, p))


if __name__ == "__main__":
    main()
