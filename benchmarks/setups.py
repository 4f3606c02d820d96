"""The models and inputs the benchmarks measure: the recipe's Conformer CTC at several sizes
(``hparams/pretrain_asr.yaml`` with size overrides) and Whisper (the packaged tiny.en or base,
real weights, or a random Whisper of a preset's dimensions), each with one training method
applied through the library (or SpeechBrain's and PEFT's LoRA, for comparison). Nothing here
measures.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


SIZES = {  # overrides of hparams/pretrain_asr.yaml
    "asr": {},
    "20m": {"frontend_channels_1": 64, "d_model": 256, "num_encoder_layers": 12,
            "d_ffn": 1024, "output_neurons": 5000},
    "tiny": {"d_model": 32, "nhead": 2, "num_encoder_layers": 1, "d_ffn": 64},
}  # fmt: skip


WHISPER_SIZES = {  # size -> model source (recipes.whisper): packaged weights or a random preset
    "whisper-tiny": "packaged",
    "whisper-base": "packaged-base",  # 72.6M, multilingual, converted into <cache>/whisper-base
    "whisper-base-random": "base",  # base's dimensions, random weights (the same step cost)
    "whisper-small": "small",
    "whisper-test": "tiny-test",
}


CACHE = ROOT / "pretrained"  # converted and random Whisper folders (default of --cache)


def base_model(size: str, window: float, cache: Path = CACHE):
    """The model to adapt, the names of its Linear layers, and the layers kept trainable."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    if size in WHISPER_SIZES:
        from recipes.whisper.model import WindowedWhisper
        from recipes.whisper.pretrained import resolve_source
        from recipes.whisper.random_init import save_random_whisper

        preset = WHISPER_SIZES[size]
        if preset.startswith("packaged"):
            source = resolve_source(preset, cache / "whisper-tiny.en")
        else:
            source = save_random_whisper(cache / f"random-whisper-{preset}", preset)
        model = WindowedWhisper(
            source, str(cache / "hub"), train_window_s=window, eval_window_s=window
        )
        head = "model.decoder.layer_norm"
    else:
        with open(ROOT / "hparams" / "pretrain_asr.yaml") as handle:
            hparams = load_hyperpyyaml(handle, {"prepare_corpus": False, **SIZES[size]})
        model, head = hparams["model"], "head"
    linear = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != head
    ]
    return model, linear, head


def build_model(method: str, size: str, rank: int, window: float, cache: Path = CACHE):
    """The model with ``method`` applied, and the module that holds adapters."""
    from speechbrain.nnet import adapters as sb_adapters

    import adapters

    model, linear, head = base_model(size, window, cache)
    # The CTC head is trained in every method; Whisper's output layer is its (tied) embedding.
    common = {"unfrozen_layers": [head] if head == "head" else []}
    if method == "full":
        return model, None
    if method == "head":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(head + "."))
        return model, None
    if method == "floor":  # BitFit on exactly the layers LoRA adapts, and the same head
        for param in model.parameters():
            param.requires_grad_(False)
        for name in [*linear, *common["unfrozen_layers"]]:
            module = model.get_submodule(name)
            trained = module.parameters() if name == head else [module.bias]
            for param in trained:
                if param is not None:
                    param.requires_grad_(True)
        return model, None
    if method == "sb_lora":
        wrapped = sb_adapters.AdaptedModel(
            model, sb_adapters.LoRA, target_layers=linear, adapter_kwargs={"rank": rank}, **common
        )
        return wrapped, wrapped
    if method == "peft_native":
        from peft import LoraConfig, get_peft_model

        wrapped = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=linear))
        for name in common["unfrozen_layers"]:
            for param in model.get_submodule(name).parameters():
                param.requires_grad_(True)
        return wrapped, wrapped
    choices = {
        "peft_lora": (adapters.peft_adapter, linear, {"r": rank, "alpha": rank}),
        "lora": (adapters.LoRA, linear, {"rank": rank}),
        "lora_fa": (adapters.LoRA, linear, {"rank": rank, "freeze_a": True}),
        "lora_bf16": (adapters.LoRA, linear, {"rank": rank, "saved_input_dtype": "bfloat16"}),
        "lora_all": (adapters.LoRA, [*linear, "*.q_proj", "*.k_proj", "*.v_proj"], {"rank": rank}),
        "lora_attention": (adapters.LoRA, ["*.q_proj", "*.v_proj"], {"rank": rank}),
        "poollora": (adapters.PoolLoRA, linear, {"rank": rank, "stride": 2}),
        "dora": (adapters.DoRA, linear, {"rank": rank}),
        "houlsby": (adapters.Houlsby, linear, {"projection_size": 32}),
    }
    cls, targets, kwargs = choices[method]
    if size in WHISPER_SIZES and method == "lora_all":  # Whisper's Q/K/V are Linear already
        targets = linear
    wrapped = adapters.AdaptedModel(
        model, cls, target_layers=targets, adapter_kwargs=kwargs, **common
    )
    return wrapped, wrapped


def workload(model, size: str, batch: int, frames: int, window: float, device: str = "cpu"):
    """``loss()`` of one training batch and ``infer()`` of one forward pass, random inputs."""
    import torch

    if size in WHISPER_SIZES:
        wav = torch.randn(batch, int(window * 16000), device=device) * 0.1
        tokens = torch.randint(0, 50000, (batch, 25), device=device)

        def loss() -> torch.Tensor:
            _, logits, _ = model(wav, tokens[:, :-1])
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

        return loss, lambda: model(wav, tokens[:, :-1])

    feats = torch.randn(batch, frames, 80, device=device)
    lengths = torch.ones(batch, device=device)
    vocab = getattr(model, "adapted_model", model).head.out_features
    targets = torch.randint(1, vocab, (batch, frames // 20), device=device)
    target_lengths = torch.full((batch,), frames // 20, device=device)

    def ctc() -> torch.Tensor:
        log_probs = model(feats, lengths).log_softmax(-1).transpose(0, 1)
        out_lengths = torch.full((batch,), log_probs.shape[0], device=device)
        return torch.nn.functional.ctc_loss(log_probs, targets, out_lengths, target_lengths)

    return ctc, lambda: model(feats, lengths)
