"""LoRA: low-rank adaptation of Linear, convolution and raw weight parameters.

Hu et al. 2021, https://arxiv.org/abs/2106.09685: the frozen ``W`` is used as
``W + s B A``, ``B`` starting at zero (identity at insertion), ``s = alpha / rank``
(``alpha / sqrt(rank)`` with rsLoRA, https://arxiv.org/abs/2312.03732). Unlike
SpeechBrain's LoRA (scale ``1 / rank``), ``alpha`` defaults to ``rank``: changing
``--rank`` does not silently change the adapter's effective learning rate.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Hashable

import torch
import torch.nn.functional as F
from torch import nn

from adapters.base import CONV_TYPES, LINEAR_TYPES, Adapter

_INITS = ("kaiming", "gaussian", "eva", "pissa")
_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
#: Dtypes ``saved_input_dtype`` accepts, by their YAML names.
SAVED_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_LAST = threading.local()


def reuse_last(x: torch.Tensor, key: Hashable, fn: Callable[[torch.Tensor], torch.Tensor]):
    """``fn(x)``, or the tensor the last call with this ``key`` returned if it was for
    this same, unchanged ``x`` and is still alive.

    q, k and v see one input, one call after the other: each cast (or pooling) of
    it would be a tensor of its own, saved once per layer. Through this they share
    one. ``key`` names what ``fn`` computes (with every argument it depends on and
    whether gradients are recorded); only weak references are held, so nothing is
    kept alive here.

    Example
    -------
    >>> x = torch.randn(4, 3)
    >>> a = reuse_last(x, ("to", torch.bfloat16), lambda t: t.to(torch.bfloat16))
    >>> a is reuse_last(x, ("to", torch.bfloat16), lambda t: t.to(torch.bfloat16))
    True
    >>> _ = x.mul_(2)  # changed in place: computed again
    >>> a is reuse_last(x, ("to", torch.bfloat16), lambda t: t.to(torch.bfloat16))
    False
    """
    if torch.is_inference(x):  # no version counter to tell a change
        return fn(x)
    key = (key, torch.is_grad_enabled())
    cache = _LAST.__dict__.setdefault("cache", {})
    source, version, result = cache.get(key, (None, -1, None))
    out = None if result is None else result()
    if out is not None and source() is x and version == x._version:
        return out
    out = fn(x)
    cache[key] = (weakref.ref(x), x._version, weakref.ref(out))
    return out


def cast_shared(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)``, one copy for the consecutive layers that cast the same input.

    Example
    -------
    >>> x = torch.randn(2, 3)
    >>> cast_shared(x, torch.float32) is x, cast_shared(x, torch.bfloat16).dtype
    (True, torch.bfloat16)
    """
    if x.dtype == dtype:
        return x
    return reuse_last(x, ("to", dtype), lambda t: t.to(dtype))


def keep_for_lowrank(
    h: torch.Tensor,
    lora_a: torch.Tensor,
    needs: tuple[bool, bool],
    dtype: torch.dtype,
    saved_dtype: torch.dtype | None = None,
) -> torch.Tensor | None:
    """What the rank-r gradients need of the (mapped) layer input ``h`` ``[..., in]``.

    ``needs``: whether ``A`` and ``B`` take gradients. ``dA = s (g B)^T h`` needs ``h``
    itself; ``dB = s g^T (h A^T)`` only the ``[tokens, rank]`` projection. So ``h`` is
    kept when ``A`` trains, ``h A^T`` when only ``B`` does (LoRA-FA), nothing otherwise;
    ``h`` in ``saved_dtype`` when given (one copy shared by layers that share it).
    ``dtype`` is the compute dtype.

    Example
    -------
    >>> h, a = torch.randn(2, 50, 16), torch.randn(4, 16)
    >>> keep_for_lowrank(h, a, (True, True), torch.float32) is h
    True
    >>> keep_for_lowrank(h, a, (False, True), torch.float32).shape  # tokens x rank
    torch.Size([100, 4])
    >>> keep_for_lowrank(h, a, (True, True), torch.float32, torch.bfloat16).dtype
    torch.bfloat16
    """
    need_a, need_b = needs
    store = saved_dtype or dtype
    if need_a:
        return cast_shared(h, store)
    if need_b:
        return (h.reshape(-1, h.shape[-1]) @ lora_a.to(dtype).t()).to(store)
    return None


def grads_from_kept(
    grad: torch.Tensor,
    kept: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    needs: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``A`` and ``B`` (``None`` where not needed) from 2-D ``grad``
    ``[tokens, out]`` and what :func:`keep_for_lowrank` kept, in ``grad``'s dtype.

    Example
    -------
    >>> a, b = torch.randn(2, 5), torch.randn(3, 2, requires_grad=True)
    >>> h, g = torch.randn(7, 5), torch.randn(7, 3)
    >>> (0.5 * h @ a.t() @ b.t()).backward(g)
    >>> kept = keep_for_lowrank(h, a, (False, True), torch.float32)
    >>> grad_a, grad_b = grads_from_kept(g, kept, a, b.detach(), 0.5, (False, True))
    >>> grad_a is None, torch.allclose(grad_b, b.grad, atol=1e-5)
    (True, True)
    """
    dtype = grad.dtype
    need_a, need_b = needs
    if need_a:
        h = kept.reshape(-1, kept.shape[-1]).to(dtype)
        grad_a, grad_b = lowrank_grads(grad, h, lora_a.to(dtype), lora_b.to(dtype), scaling)
        return grad_a, grad_b if need_b else None
    if need_b:
        return None, (kept.to(dtype).t() @ grad).t().mul(scaling)
    return None, None


def lowrank_grads(
    grad: torch.Tensor, h: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``A`` and ``B`` for an output ``s * h A^T B^T``, from 2-D tensors.

    ``grad`` is ``[tokens, out]``, ``h`` ``[tokens, in]``. Products in ``[rank, tokens]``
    layout: MKL runs ``(A h^T) @ grad`` several times faster than ``grad^T @ (h A^T)``.

    Example
    -------
    >>> a, b = torch.randn(2, 5, requires_grad=True), torch.randn(3, 2, requires_grad=True)
    >>> h, g = torch.randn(7, 5), torch.randn(7, 3)
    >>> (0.5 * h @ a.t() @ b.t()).backward(g)
    >>> grad_a, grad_b = lowrank_grads(g, h, a.detach(), b.detach(), 0.5)
    >>> torch.allclose(grad_a, a.grad, atol=1e-5), torch.allclose(grad_b, b.grad, atol=1e-5)
    (True, True)
    """
    grad_b = ((lora_a @ h.t()) @ grad).t().mul(scaling)
    grad_a = ((lora_b.t() @ grad.t()) @ h).mul_(scaling)
    return grad_a, grad_b


def linear_into_fresh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """``x W^T + b`` in a fresh tensor, not a view: SpeechBrain modifies outputs in place."""
    out = x.new_empty(*x.shape[:-1], weight.shape[0])
    flat_in, flat_out = x.reshape(-1, x.shape[-1]), out.view(-1, weight.shape[0])
    if bias is None:
        torch.mm(flat_in, weight.t(), out=flat_out)
    else:
        torch.addmm(bias, flat_in, weight.t(), out=flat_out)
    return out


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` runs in: autocast's where it is on for ``x``'s device.

    Example
    -------
    >>> x = torch.randn(2, 3)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     compute_dtype(x)
    torch.bfloat16
    >>> compute_dtype(x)
    torch.float32
    """
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def merged_weight(
    weight: torch.Tensor,
    lora_b: torch.Tensor,
    lora_a: torch.Tensor,
    scaling: float,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``W + s B A``, or ``W + s (B A - B0 A0)`` with ``start = (B0, A0)`` (PiSSA).

    The difference is formed as ``(B - B0) A + B0 (A - A0)``: at ``B = B0, A = A0``
    both terms are exact zeros, and the result is ``W`` bit for bit.

    Example
    -------
    >>> w, b, a = torch.randn(5, 4), torch.randn(5, 2), torch.randn(2, 4)
    >>> torch.equal(merged_weight(w, b, a, 0.5, start=(b.clone(), a.clone())), w)
    True
    >>> torch.allclose(merged_weight(w, b, a, 0.5), w + 0.5 * b @ a)
    True
    """
    if start is None:
        return torch.addmm(weight, lora_b, lora_a, alpha=scaling)
    return torch.add(weight, start_difference(lora_b, lora_a, start), alpha=scaling)


def start_difference(
    lora_b: torch.Tensor, lora_a: torch.Tensor, start: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """``B A - B0 A0`` as ``(B - B0) A + B0 (A - A0)``: exactly zero at the start.

    Example
    -------
    >>> b, a = torch.randn(5, 2), torch.randn(2, 4)
    >>> start_difference(b, a, (b.clone(), a.clone())).abs().max()
    tensor(0.)
    """
    lora_b0, lora_a0 = start
    return torch.addmm((lora_b - lora_b0) @ lora_a, lora_b0, lora_a - lora_a0)


class _FusedLoRALinear(torch.autograd.Function):
    """``x (W + s B A P)^T + b`` in one matmul, with rank-r gradients (``W + s (B A -
    B0 A0)`` with PiSSA's starting point ``start = (B0, A0)``).

    ``P`` maps the layer input to ``A``'s (identity for LoRA, pooling for PoolLoRA):
    ``down`` applies it to activations, ``expand`` turns ``A`` into ``A P``. The
    backward takes ``dx`` from the merged weight and ``A``, ``B`` gradients from
    rank-r products (no full weight gradient). Saved for them: ``down(x)`` when ``A``
    trains, only ``A down(x)`` (``[tokens, rank]``) when ``A`` is frozen (LoRA-FA), in
    ``saved_dtype`` when given (:func:`keep_for_lowrank`).

    Under autocast it follows the autocast dtype as ``torch.amp.custom_fwd`` would:
    the merged weight is formed in the parameters' precision, the matmuls run in
    the autocast dtype, and the gradients return in each input's own dtype (float32
    adapters keep float32 gradients and optimizer state). Layers that share an input
    (q, k, v) share its cast too (:func:`cast_shared`).
    """

    @staticmethod
    def forward(
        ctx, x, weight, bias, lora_a, lora_b, scaling, down, expand, saved_dtype=None, start=None
    ):
        dtype = compute_dtype(x)
        ctx.needs = tuple(ctx.needs_input_grad[3:5])
        with torch.autocast(x.device.type, enabled=False):
            merged = merged_weight(weight, lora_b, expand(lora_a), scaling, start).to(dtype)
            xc = cast_shared(x, dtype)
            kept = keep_for_lowrank(down(xc), lora_a, ctx.needs, dtype, saved_dtype)
            ctx.save_for_backward(kept, weight, lora_a, lora_b)
            out = linear_into_fresh(xc, merged, None if bias is None else bias.to(dtype))
        ctx.scaling, ctx.expand, ctx.dtype, ctx.x_dtype = scaling, expand, dtype, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.start = start  # buffers, constant
        return out

    @staticmethod
    def backward(ctx, grad):
        kept, weight, lora_a, lora_b = ctx.saved_tensors
        s, dtype = ctx.scaling, ctx.dtype
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(dtype)
            grad_x = grad_bias = None
            if ctx.needs_input_grad[0]:
                merged = merged_weight(weight, lora_b, ctx.expand(lora_a), s, ctx.start).to(dtype)
                grad_x = (g @ merged).view(*grad.shape[:-1], weight.shape[1]).to(ctx.x_dtype)
            if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
                grad_bias = g.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
            grad_a, grad_b = grads_from_kept(g, kept, lora_a, lora_b, s, ctx.needs)
        return (
            grad_x, None, grad_bias, like_param(grad_a, lora_a), like_param(grad_b, lora_b),
            None, None, None, None, None,
        )  # fmt: skip


def like_param(grad: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor | None:
    """``grad`` in ``param``'s dtype (``None`` stays ``None``).

    Example
    -------
    >>> like_param(torch.ones(2, dtype=torch.bfloat16), torch.zeros(2)).dtype, like_param(None, 0)
    (torch.float32, None)
    """
    return None if grad is None else grad.to(param.dtype)


def few_tokens(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x`` has fewer tokens than ``out * in / (out + in)`` for this weight.

    Forming the merged weight ``W + s B A`` touches every weight entry (and is done
    again in backward); the low-rank branch costs ``tokens x (in + out)`` per rank.
    Below this count (a decoding step, a short text batch) the branch is cheaper:
    Whisper small's decoder layers (48 tokens, 768 x 768) took 1.55 ms fused and
    1.23 ms with the branch per forward + backward (``benchmarks/lora_overhead.py``).

    Example
    -------
    >>> w = torch.empty(768, 768)
    >>> few_tokens(torch.empty(2, 24, 768), w), few_tokens(torch.empty(2, 500, 768), w)
    (True, False)
    """
    out_features, in_features = weight.shape[:2]
    tokens = x.numel() // max(x.shape[-1], 1)
    return tokens * (out_features + in_features) < out_features * in_features


def needs_grad(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether autograd will record a layer applied to ``x`` with ``params``."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))


class LoRA(Adapter):
    """Low-rank update of a Linear or convolution layer (or of a raw weight, through
    ``AdaptedModel``).

    On a convolution ``A`` has the base geometry (kernel, stride, padding and its
    mode, dilation) and ``B`` is pointwise: rank up to ``min(out, in x kernel)``,
    as in SpeechBrain 1.1.2. A grouped (or depthwise) convolution gets a rank-``rank``
    update per group (``A`` and ``B`` grouped like the base), which merges exactly.

    Arguments
    ---------
    target_module : torch.nn.Module
        The pretrained ``nn.Linear`` or ``nn.Conv1d/2d/3d``. It is frozen.
    rank : int
        Rank of the update (of each group's update).
    alpha : float, optional
        Scale numerator; defaults to ``rank`` (scale 1).
    dropout : float
        Dropout applied to the input of the low-rank branch.
    use_rslora : bool
        Scale by ``alpha / sqrt(rank)`` instead of ``alpha / rank``.
    init : str
        ``A``'s initialisation: ``"kaiming"`` (uniform), ``"gaussian"`` (std ``1 / rank``)
        or ``"eva"``: the principal directions of the layer's inputs on target data, set
        by :class:`adapters.data_init.InputMoments` before training (kaiming until then;
        the recipes do it when they see this value); or ``"pissa"`` (Meng et al. 2024,
        https://arxiv.org/abs/2404.02948): ``B`` and ``A`` start at the top-``rank``
        singular triplets of the frozen weight, ``s B0 A0 = U_r S_r V_r^T``, and the
        layer computes ``W + s (B A - B0 A0)``: training moves the principal part
        itself while ``W`` stays the pretrained weight, bit for bit (merge, export and
        the base fingerprint see it unchanged). ``B0``, ``A0`` are buffers, saved with
        the adapter. Linear weights only (and raw weights held as rows of a matrix).
    freeze_a : bool
        LoRA-FA (Zhang et al. 2023, https://arxiv.org/abs/2308.03303): ``A`` stays at its
        random initialisation (not trained, still saved with the adapter), so backward
        keeps only the ``[tokens, rank]`` projection ``A x`` instead of the input ``x``.
    saved_input_dtype : str, optional
        ``"bfloat16"`` (or ``"float16"``, ``"float32"``): the dtype in which the fused
        path keeps what the rank-r gradients need (``x``, or ``A x`` with ``freeze_a``);
        ``None`` keeps the compute dtype. Forward and the input gradient are unchanged.

    Example
    -------
    >>> base = torch.nn.Linear(16, 32)
    >>> lora = LoRA(base, rank=4)
    >>> x = torch.randn(2, 5, 16)
    >>> torch.equal(lora(x), base(x))  # identity at insertion
    True
    >>> lora.lora_A.shape, lora.lora_B.shape
    (torch.Size([4, 16]), torch.Size([32, 4]))
    >>> LoRA(torch.nn.Conv1d(1, 512, kernel_size=10), rank=4).lora_A.shape  # rank <= 1 x 10
    torch.Size([4, 1, 10])
    >>> depthwise = LoRA(torch.nn.Conv1d(8, 8, kernel_size=3, groups=8), rank=1)
    >>> depthwise.delta_weight().shape == depthwise.base_layer.weight.shape
    True
    >>> LoRA(base, rank=4, freeze_a=True).lora_A.requires_grad  # LoRA-FA
    False
    >>> pissa = LoRA(base, rank=4, init="pissa")
    >>> torch.equal(pissa(x), base(x)), pissa.lora_B.abs().sum() > 0  # identity, B0 != 0
    (True, tensor(True))
    """

    mergeable = True
    #: Whether ``init="pissa"`` applies: ``A`` sees the layer input unchanged and the
    #: update is added to ``W`` (not so for PoolLoRA's pooled input or DoRA's rescaling).
    principal_init = True

    def __init__(
        self,
        target_module: nn.Module,
        rank: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        use_rslora: bool = False,
        init: str = "kaiming",
        freeze_a: bool = False,
        saved_input_dtype: str | None = None,
    ) -> None:
        super().__init__(target_module)
        name = type(self).__name__
        if not isinstance(target_module, LINEAR_TYPES + CONV_TYPES):
            raise TypeError(
                f"{name} adapts nn.Linear and nn.Conv1d/2d/3d modules, not "
                f"{type(target_module).__name__}. Recurrent and attention weights are reached "
                "by name through AdaptedModel (e.g. 'rnn.weight_ih_l0', 'attn.q_proj'); leave "
                "other layers out with exclude_layers."
            )
        if init not in _INITS:
            raise ValueError(f"Unknown {name} init {init!r}; use one of {_INITS}.")
        if saved_input_dtype is not None and saved_input_dtype not in SAVED_DTYPES:
            raise ValueError(
                f"Unknown {name} saved_input_dtype {saved_input_dtype!r}; use one of "
                f"{sorted(SAVED_DTYPES)} or None (the compute dtype)."
            )
        weight = target_module.weight
        self.groups = getattr(target_module, "groups", 1)
        kernel = tuple(weight.shape[2:])  # () for Linear
        down_features = self._down_features(weight.shape[1])
        limit = min(weight.shape[0] // self.groups, down_features * math.prod(kernel))
        if not isinstance(rank, int) or not 1 <= rank <= limit:
            raise ValueError(
                f"{name} rank must be an integer in [1, {limit}] for this {tuple(weight.shape)} "
                f"weight (groups={self.groups}), got {rank!r}; lower the rank or leave this "
                "layer out (exclude_layers)."
            )
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = self.alpha / (math.sqrt(rank) if use_rslora else rank)
        self.use_rslora = use_rslora
        self.freeze_a, self.saved_input_dtype = bool(freeze_a), saved_input_dtype
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory = {"device": weight.device, "dtype": weight.dtype}
        a_shape = (self.groups * rank, down_features, *kernel)
        self.lora_A = nn.Parameter(torch.empty(a_shape, **factory))
        self.lora_B = nn.Parameter(
            torch.zeros(weight.shape[0], rank, *(1,) * len(kernel), **factory)
        )
        self.init = init
        if init == "pissa":
            self._start_at_principal_part(target_module)
        elif init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / rank)
        else:  # "eva" starts here too, until InputMoments sets A from data
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_A.requires_grad_(not self.freeze_a)

    @torch.no_grad()
    def _start_at_principal_part(self, target_module: nn.Module) -> None:
        """PiSSA: ``B = B0 = U_r sqrt(S_r / s)``, ``A = A0 = sqrt(S_r / s) V_r^T`` from
        the SVD of the weight (in float64), ``B0`` and ``A0`` kept as buffers."""
        weight = target_module.weight
        what = None
        if not type(self).principal_init:
            what = type(self).__name__
        elif not isinstance(target_module, LINEAR_TYPES) or weight.dim() != 2:
            what = f"a {type(target_module).__name__} weight of shape {tuple(weight.shape)}"
        if what is not None:
            raise ValueError(
                f"init='pissa' starts LoRA at a Linear weight's singular vectors; it does not "
                f"apply to {what}. Use init='kaiming' here, or leave this layer out."
            )
        if self.scaling <= 0:
            raise ValueError(
                f"init='pissa' splits the weight's principal part by the scale alpha / rank, "
                f"which must be positive (alpha {self.alpha:g}); give a positive alpha."
            )
        u, singular, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        root = (singular[: self.rank] / self.scaling).sqrt()
        lora_b0 = (u[:, : self.rank] * root).to(weight.dtype)
        lora_a0 = (root[:, None] * vh[: self.rank]).to(weight.dtype)
        self.lora_A.copy_(lora_a0)
        self.lora_B.copy_(lora_b0)
        self.register_buffer("lora_A0", lora_a0)
        self.register_buffer("lora_B0", lora_b0)

    def _start(
        self, params: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(B0, A0)`` with PiSSA (from ``params`` when given), else ``None``."""
        if self.init != "pissa":
            return None
        source = self._buffers if params is None else params
        return source["lora_B0"], source["lora_A0"]

    # Hooks for variants that map the input before A: its size, the map, A composed with it.
    def _down_features(self, in_features: int) -> int:
        return in_features

    def _down_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _expand_A(self, lora_a: torch.Tensor) -> torch.Tensor:
        return lora_a

    def lowrank_delta(self, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Return ``s * B @ A`` (per group) in the shape of the base weight (``A``, ``B``
        from ``params`` when given).

        Example
        -------
        >>> lora = LoRA(torch.nn.Conv2d(3, 6, kernel_size=3), rank=2)
        >>> lora.lowrank_delta().shape
        torch.Size([6, 3, 3, 3])
        """
        lora_a = self.lora_A if params is None else params["lora_A"]
        lora_b = self.lora_B if params is None else params["lora_B"]
        start = self._start(params)
        if start is not None:  # PiSSA (Linear): s (B A - B0 A0)
            return self.scaling * start_difference(lora_b, lora_a, start)
        b = lora_b.flatten(1).unflatten(0, (self.groups, -1))
        a = self._expand_A(lora_a).unflatten(0, (self.groups, -1))
        return self.scaling * torch.einsum("gor,gri...->goi...", b, a).flatten(0, 1)

    def delta_weight(self) -> torch.Tensor:
        """The change to the base weight: the low-rank update."""
        return self.lowrank_delta()

    def lowrank_branch(
        self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``s * B(A(x))``, shaped like the base layer's output (``A``, ``B`` from
        ``params`` when given: another adapter set's ``lora_A``, ``lora_B``)."""
        lora_a = self.lora_A if params is None else params["lora_A"]
        lora_b = self.lora_B if params is None else params["lora_B"]
        h = self._down_input(self.dropout(x))
        start = self._start(params)
        if start is not None:  # PiSSA: (B - B0) A h + B0 (A - A0) h, exactly 0 at the start
            lora_b0, lora_a0 = start
            update = F.linear(F.linear(h, lora_a), lora_b - lora_b0) + F.linear(
                F.linear(h, lora_a - lora_a0), lora_b0
            )
        elif isinstance(self.base_layer, LINEAR_TYPES):
            update = F.linear(F.linear(h, lora_a), lora_b)
        else:  # A shares the base geometry; B is pointwise, grouped like the base
            conv = _CONVS[lora_b.dim() - 2]
            a_out = self.base_layer._conv_forward(h, lora_a, None)
            update = conv(a_out, lora_b, groups=self.groups)
        return self.scaling * update

    def mixed_forward(
        self, x: torch.Tensor, groups: list[tuple[torch.Tensor, dict[str, torch.Tensor] | None]]
    ) -> torch.Tensor:
        """One batch, one adapter set per group of samples (dim 0): the base output
        once for all, plus each group's low-rank branch (``None``: the base alone).

        Example
        -------
        >>> lora = LoRA(torch.nn.Linear(4, 3), rank=2)
        >>> other = {"lora_A": torch.randn(2, 4), "lora_B": torch.randn(3, 2)}
        >>> x = torch.randn(3, 4)
        >>> out = lora.mixed_forward(x, [(torch.tensor([0, 2]), other), (torch.tensor([1]), None)])
        >>> torch.allclose(out[1], lora.base_layer(x[1]))
        True
        """
        if self.merged:
            raise RuntimeError("Unmerge the adapters before running a mixed batch.")
        out = self.base_layer(x)
        for index, params in groups:
            if params is None:
                continue
            if index.numel() == x.shape[0]:  # one set for the whole batch: no gather
                out = out + self.lowrank_branch(x, params).to(out.dtype)
            else:
                out.index_add_(0, index, self.lowrank_branch(x[index], params).to(out.dtype))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the scaled low-rank branch. In training, a frozen Linear
        without dropout takes the fused path, one matmul by ``W + s B A``, unless the
        input has so few tokens that forming ``W + s B A`` costs more than the branch.

        Without gradients (inference) it always takes the branch: a choice by token
        count would depend on the batch (eight samples cross the count where one does
        not), and the two paths round differently, so a sample's output, and a greedy
        transcript, would change with its batchmates. Mixed batches take the branch too.
        """
        layer = self.base_layer
        if self.merged:
            return layer(x)
        if (
            not self.fusable()
            or not needs_grad(x, self.lora_A, self.lora_B)
            or few_tokens(x, layer.weight)
        ):
            return layer(x) + self.lowrank_branch(x)
        return _FusedLoRALinear.apply(
            x, layer.weight, layer.bias, self.lora_A, self.lora_B, self.scaling,
            self._down_input, self._expand_A, self._saved_dtype(), self._start(),
        )  # fmt: skip

    def _saved_dtype(self) -> torch.dtype | None:
        """``saved_input_dtype`` as a torch dtype (``None``: the compute dtype)."""
        return SAVED_DTYPES.get(self.saved_input_dtype)

    def fusable(self) -> bool:
        """Whether forward may multiply by the merged weight: frozen Linear base, no dropout."""
        layer = self.base_layer
        return (
            isinstance(layer, LINEAR_TYPES)
            and isinstance(self.dropout, nn.Identity)
            and not layer.weight.requires_grad
        )

    def extra_repr(self) -> str:
        text = f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}"
        text += f", groups={self.groups}" if self.groups > 1 else ""
        text += ", freeze_a=True" if self.freeze_a else ""
        text += ", init=pissa" if self.init == "pissa" else ""
        text += f", saved_input_dtype={self.saved_input_dtype}" if self.saved_input_dtype else ""
        return f"{text}, merged=True" if self.merged else text
