"""Run under torchrun: a tiny ``AdaptationBrain`` with BatchNorm trains one epoch on CPU.

    torchrun --standalone --nproc_per_node=2 tests/ddp_batchnorm.py [--sync]

``--sync`` wraps the model the way SpeechBrain's own ``Brain`` does (SyncBatchNorm), to
show what the recipes' Brain avoids on CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import speechbrain as sb
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.adaptation import AdaptationBrain


class Tiny(AdaptationBrain):
    def compute_forward(self, batch, stage):
        return self.modules.net(batch[0].to(self.device))

    def compute_objectives(self, predictions, batch, stage):
        return (predictions - batch[1].to(self.device)).pow(2).mean()


class SpeechBrainWrapping(Tiny):
    _wrap_distributed = sb.Brain._wrap_distributed


def main() -> None:
    run_opts = {"distributed_launch": True, "distributed_backend": "gloo", "device": "cpu"}
    sb.utils.distributed.ddp_init_group(run_opts)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    hparams = {"seed": 1, "epoch_counter": sb.utils.epoch_loop.EpochCounter(1)}
    cls = SpeechBrainWrapping if "--sync" in sys.argv else Tiny
    brain = cls(
        modules={"net": net},
        opt_class=lambda params: torch.optim.SGD(params, lr=0.1),
        hparams=hparams,
        run_opts=run_opts,
    )
    data = [(torch.randn(4), torch.randn(1)) for _ in range(16)]
    brain.fit(hparams["epoch_counter"], data, train_loader_kwargs={"batch_size": 4})
    print(f"rank {torch.distributed.get_rank()} trained", flush=True)


if __name__ == "__main__":
    main()
