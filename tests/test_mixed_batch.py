"""Many adapters on one base: a batch in which each sample uses its own adapter set."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapters import AdaptedModel, DoRA, Houlsby, LoRA, PoolLoRA

KINDS = [
    (LoRA, {"rank": 2}),
    (LoRA, {"rank": 2, "init": "pissa"}),  # its start (B0, A0) travels with each set
    (PoolLoRA, {"rank": 2, "stride": 2}),
    (DoRA, {"rank": 2}),
    (Houlsby, {}),
]


class Net(nn.Module):
    """Linear, Conv1d, BatchNorm and an unfrozen head, batch first."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x)).transpose(1, 2)
        return self.head(self.norm(self.conv(h)).transpose(1, 2))


def _build(cls, kwargs) -> AdaptedModel:
    torch.manual_seed(0)
    pissa = kwargs.get("init") == "pissa"  # Linear layers only: the convolution keeps kaiming
    return AdaptedModel(
        Net(), cls, all_linear=True, all_conv=True, exclude_layers=["head"],
        unfrozen_layers=["head"], adapter_kwargs=kwargs,
        adapter_kwargs_by_layer={"conv": {"init": "kaiming"}} if pissa else None,
    )  # fmt: skip


def _train_a_little(model: AdaptedModel, seed: int) -> None:
    """Give the active set distinct tensors: adapters, head and BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    model.train()
    model.adapted_model(torch.randn(4, 5, 6, generator=generator))  # moves the statistics
    model.eval()


@pytest.mark.parametrize(
    "cls, kwargs", KINDS, ids=[c.__name__ + ("-pissa" if k.get("init") else "") for c, k in KINDS]
)
def test_mixed_batch_equals_each_sample_alone_with_its_adapter(cls, kwargs, tmp_path):
    trainer = _build(cls, kwargs)
    for seed, name in ((1, "noisy"), (2, "voices")):
        trainer.add_adapter(name)
        _train_a_little(trainer, seed)
        trainer.save_adapter(tmp_path / f"{name}.safetensors")
    # A fresh base serves both files by name.
    server = _build(cls, kwargs).eval()
    for name in ("noisy", "voices"):
        server.load_adapter(str(tmp_path / f"{name}.safetensors"), adapter_name=name)
    assert server.adapter_names == ["default", "noisy", "voices"]
    names = ["noisy", "voices", None, "voices", "noisy", "default"]
    x = torch.randn(len(names), 5, 6)
    with torch.no_grad():
        mixed = server(x, adapter_names=names)
        for i, name in enumerate(names):
            if name is None:
                server.disable_adapters()
            else:
                server.set_adapter(name)
            alone = server(x[i : i + 1])[0]
            assert torch.allclose(mixed[i], alone, atol=1e-5), (i, name)
    server.set_adapter("noisy")
    with torch.no_grad():  # the groups are different outputs, and the forward is restored
        assert not torch.allclose(mixed[0], mixed[1], atol=1e-3)
        assert torch.equal(server(x[:1]), server(x[:1]))
    assert "forward" not in server.adapted_model.inp.__dict__


def test_a_batch_k_times_longer_repeats_each_name_k_times():
    """Beam search inflates the batch (``repeat_interleave``): names follow."""
    model = _build(LoRA, {"rank": 2}).eval()
    _train_a_little(model, 1)
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        mixed = model(x.repeat_interleave(3, dim=0), adapter_names=["default", None])
        model.disable_adapters()
        base = model(x[1:])
    assert torch.allclose(mixed[3:], base.expand(3, -1, -1), atol=1e-5)


def test_unknown_names_and_raw_weights_are_refused():
    model = _build(LoRA, {"rank": 2}).eval()
    with pytest.raises(KeyError, match="No adapter named 'telephone'"):
        model(torch.randn(1, 5, 6), adapter_names=["telephone"])
    with pytest.raises(ValueError, match="one name per sample"):
        model(torch.randn(3, 5, 6), adapter_names=["default", None])
    rnn = AdaptedModel(
        nn.Sequential(nn.GRU(4, 4)), LoRA, all_linear=True, adapter_kwargs={"rank": 1}
    )
    with pytest.raises(ValueError, match="raw weights"):
        rnn(torch.randn(2, 3, 4), adapter_names=["default", None])


def test_load_adapter_by_name_refuses_a_duplicate_and_another_base(tmp_path):
    model = _build(LoRA, {"rank": 2})
    model.save_adapter(tmp_path / "a.safetensors")
    model.load_adapter(str(tmp_path / "a.safetensors"), adapter_name="a")
    with pytest.raises(ValueError, match="loaded already"):
        model.load_adapter(str(tmp_path / "a.safetensors"), adapter_name="a")
    torch.manual_seed(5)
    other = AdaptedModel(Net(), LoRA, all_linear=True, all_conv=True, exclude_layers=["head"],
                         unfrozen_layers=["head"], adapter_kwargs={"rank": 2})  # fmt: skip
    with pytest.raises(ValueError, match="other weights"):
        other.load_adapter(str(tmp_path / "a.safetensors"), adapter_name="a")


def test_mixed_batch_on_whisper_attention_feed_forward_and_conv(tmp_path):
    """Teacher-forced Whisper logits: a mixed batch equals the batch run with each
    utterance's set active (1e-5), and each utterance alone within the float noise
    that batching alone causes in this model (the base model, batched vs alone)."""
    from recipes.whisper.model import WindowedWhisper
    from recipes.whisper.random_init import save_random_whisper

    whisper = WindowedWhisper(save_random_whisper(tmp_path / "w"), str(tmp_path / "c"), 2.0, 2.0)
    model = AdaptedModel(whisper, LoRA, all_linear=True, all_conv=True, adapter_kwargs={"rank": 2})
    model.add_adapter("b")
    _randomise(model, 1)
    model.set_adapter("default")
    _randomise(model, 2)
    model.eval()
    wavs = torch.randn(3, 16000)
    tokens = torch.tensor([[whisper.bos, 5, 6]] * 3)
    names = ["b", None, "default"]

    def run(name, rows=slice(None)):
        model.disable_adapters() if name is None else model.set_adapter(name)
        return model(wavs[rows], tokens[rows])[1]

    with torch.no_grad():
        mixed = model(wavs, tokens, adapter_names=names)[1]
        noise = max((run(None)[i] - run(None, slice(i, i + 1))[0]).abs().max() for i in range(3))
        for i, name in enumerate(names):
            assert torch.allclose(mixed[i], run(name)[i], atol=1e-5), name
            alone = run(name, slice(i, i + 1))[0]
            assert (mixed[i] - alone).abs().max() <= 2 * noise + 1e-5, name
    assert not torch.allclose(mixed[0], mixed[1], atol=1e-3)


def _randomise(model: AdaptedModel, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def test_freezing_everything_for_inference_keeps_what_the_sets_hold(tmp_path):
    """SpeechBrain's interfaces set requires_grad False on every parameter: saving,
    loading by name, switching and mixing must not depend on it."""
    model = _build(LoRA, {"rank": 2})
    _train_a_little(model, 1)
    trained, base = model.adapter_state_dict(), model.base_state()
    model.save_adapter(tmp_path / "a.safetensors")
    model.requires_grad_(False)
    assert model.adapter_state_dict().keys() == trained.keys()
    assert model.base_state().keys() == base.keys()
    model.load_adapter(str(tmp_path / "a.safetensors"), adapter_name="a")  # fingerprint holds
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        before = model.eval()(x)
        model.set_adapter("a")
        model.set_adapter("default")  # the switch kept the default set's tensors
        assert torch.equal(model(x), before)
        assert torch.allclose(model(x, adapter_names=["a", "default"]), before, atol=1e-6)
