"""How the benchmarks measure and report: peak resident memory, the bytes autograd saves,
CPU stalls (runs on a busy machine are left out), and the tables and bar charts they write.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import json
from pathlib import Path


def rss_peak_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def rss_now_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def reset_rss_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def saved_storages(run, params) -> dict:
    """The distinct storages autograd saves for backward in ``run()``, ``params`` excluded,
    as ``{data_ptr: tensor}`` (the tensors are held, so no freed storage is reused meanwhile).

    Example
    -------
    >>> import torch
    >>> w = torch.ones(4, 3, requires_grad=True)
    >>> [t.shape for t in saved_storages(lambda: torch.ones(5, 4) @ w, [w]).values()]
    [torch.Size([5, 4])]
    """
    import torch

    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            saved.setdefault(ptr, tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return saved


def saved_bytes(run, params) -> int:
    """Bytes of the distinct tensors autograd saves for backward in ``run()``, ``params`` excluded.

    Example
    -------
    >>> import torch
    >>> w = torch.ones(4, 3, requires_grad=True)
    >>> saved_bytes(lambda: torch.ones(5, 4) @ w, [w])  # the 5 x 4 input, float32
    80
    """
    return sum(t.untyped_storage().nbytes() for t in saved_storages(run, params).values())


STALL_LIMIT = 0.10  # runs whose CPU stall fraction exceeds this are left out of the medians


def cpu_stall_us() -> int:
    """Total microseconds some task waited for a CPU (/proc/pressure/cpu; 0 if unavailable)."""
    try:
        with open("/proc/pressure/cpu") as handle:
            return int(handle.readline().split("total=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return 0


def write_results(out: Path, tag: str, data: dict, table: str, draw) -> None:
    """Write ``<tag>.json`` (``data``), ``.md`` (``table``) and ``.png`` (``draw(path)``)."""
    (out / f"{tag}.json").write_text(json.dumps(data, indent=1))
    (out / f"{tag}.md").write_text(table + "\n")
    draw(out / f"{tag}.png")
    print(json.dumps(data.get("meta", {})))
    print(table)
    print(f"wrote {out}/{tag}.json, .md, .png")


def ratio_bars(
    names: list[str], panels: list[tuple[list[float], str]], path: Path, size=(11, 4)
) -> None:
    """One horizontal bar chart per panel (values, title), a line at 1.0, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=size, sharey=True, squeeze=False)
    for ax, (values, title) in zip(axes[0], panels, strict=True):
        ax.barh(names, values, color="#4c72b0")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(title)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
