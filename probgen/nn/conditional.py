r"""Time- and class-conditional networks ``net(x, t, labels=None)``: embeddings and the 2-D MLP.

The protocol (DESIGN.md, "network of x and t") shared by noise predictors, scores and
vector fields: ``x`` of shape ``(batch, *event)``, ``t`` of shape ``(batch,)`` (a scalar is
broadcast to the batch), ``labels`` an integer tensor of shape ``(batch,)`` or ``None``.
Class-conditional networks keep one extra *null* class (index ``num_classes``) that stands
for "no label": ``labels=None`` means the null class for every example, which is what
classifier-free guidance needs from one network (Ho & Salimans, 2021).

``t`` enters through a sinusoidal embedding of ``time_scale * t``: the default scale 1000
suits times in [0, 1], which every family passes in probgen time (flow matching, score
SDEs, and DDPM, whose step :math:`s` is at :math:`t = 1 - s/(T-1)`,
:meth:`probgen.diffusion.NoiseSchedule.time_of_step`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from probgen.nn.embeddings import SinusoidalEmbedding
from probgen.nn.init import zero_init_
from probgen.nn.mlp import activation as _activation

__all__ = ["ConditionEmbedding", "ConditionalMLP", "check_time", "check_labels",
           "image_condition"]


def check_time(t: Tensor | float, x: Tensor) -> Tensor:
    """``t`` as a floating tensor of shape ``(batch,)`` on ``x``'s device.

    A Python number or a 0-d / one-element tensor is broadcast to the batch.

    Raises:
        ValueError: ``t`` has another shape than ``(batch,)``, or non-finite values.
    """
    if not isinstance(t, Tensor):
        t = torch.as_tensor(float(t))
    t = t.to(device=x.device)
    if not t.is_floating_point():
        t = t.to(x.dtype if x.is_floating_point() else torch.get_default_dtype())
    if t.numel() == 1 and t.dim() <= 1 and x.shape[0] != 1:
        t = t.reshape(1).expand(x.shape[0])
    if t.shape != x.shape[:1]:
        raise ValueError(f"t: expected shape ({x.shape[0]},) (one time per example) or a "
                         f"scalar, got {tuple(t.shape)}.")
    # Not while torch.compile traces: reading values would split the graph.
    if not torch.compiler.is_compiling() and not torch.isfinite(t).all():
        raise ValueError("t: expected finite times, got NaN or Inf.")
    return t


def check_labels(labels: Tensor | None, batch: int, num_classes: int | None,
                 device: torch.device) -> Tensor | None:
    """``labels`` checked (integer, shape ``(batch,)``, in ``0..num_classes``), or ``None``.

    ``None`` becomes the null class ``num_classes`` for a class-conditional network and stays
    ``None`` for an unconditional one.

    Raises:
        ValueError: labels given to an unconditional network, or of a wrong shape, dtype
            or range.
    """
    if not num_classes:
        if labels is not None:
            raise ValueError("labels: this network is unconditional (num_classes=None); "
                             "build it with num_classes to pass labels.")
        return None
    if labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex():
        got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected an integer tensor of shape ({batch},), got {got}.")
    if labels.dim() == 0:
        labels = labels.reshape(1).expand(batch)
    if labels.shape != (batch,):
        raise ValueError(f"labels: expected shape ({batch},), got {tuple(labels.shape)}.")
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"labels: expected values in 0..{num_classes - 1} (or {num_classes}, "
                         f"the null class), got values in {int(labels.min())}.."
                         f"{int(labels.max())}.")
    return labels.to(device=device, dtype=torch.long)


class ConditionEmbedding(nn.Module):
    r"""Creates the embedding of a time and an optional class label, ``(batch,) -> (batch, dim)``.

    :math:`e(t, y) = W_2\,\mathrm{SiLU}(W_1\,\mathrm{sin}(s\,t)) + E[y]`, with a learned
    table :math:`E` over ``num_classes + 1`` rows (the last is the null class).

    Args:
        dim: output size.
        num_classes: number of classes (``None``: unconditional).
        time_scale: multiplies t before the sinusoidal features.
        frequency_dim: number of sinusoidal features (even).

    Example:
        >>> emb = ConditionEmbedding(16, num_classes=3)
        >>> emb(torch.rand(4), torch.tensor([0, 1, 2, 3])).shape
        torch.Size([4, 16])
    """

    def __init__(self, dim: int, num_classes: int | None = None, time_scale: float = 1000.0,
                 frequency_dim: int | None = None) -> None:
        super().__init__()
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"num_classes: expected a positive int or None, got {num_classes!r}.")
        freq = frequency_dim or max(2, 2 * (dim // 4))
        self.num_classes = int(num_classes) if num_classes else None
        self.time = nn.Sequential(SinusoidalEmbedding(freq, scale=time_scale),
                                  nn.Linear(freq, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(self.num_classes + 1, dim) if self.num_classes else None

    @property
    def null_label(self) -> int | None:
        """The index of the null class (``num_classes``), or ``None`` when unconditional."""
        return self.num_classes

    def forward(self, t: Tensor, labels: Tensor | None = None) -> Tensor:  # noqa: D102
        e = self.time(t)
        if self.label is not None:
            labels = check_labels(labels, t.shape[0], self.num_classes, t.device)
            e = e + self.label(labels).to(e.dtype)
        elif labels is not None:
            check_labels(labels, t.shape[0], None, t.device)
        return e


def image_condition(embed: ConditionEmbedding, event_shape: tuple[int, ...], x: Tensor,
                    t: Tensor | float, labels: Tensor | None = None) -> Tensor:
    """The condition embedding of an image network's inputs, after checking them: images
    ``x`` of shape ``(batch, *event_shape)``, times ``t`` (see :func:`check_time`) and
    ``labels`` (``None``: the null class)."""
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(f"x: expected shape (batch, {', '.join(map(str, event_shape))}), got "
                         f"{tuple(x.shape)}.")
    return embed(check_time(t, x).to(x.dtype), labels)


class ConditionalMLP(nn.Module):
    r"""Creates the course's conditional MLP for vectors: ``net(x, t, labels=None)``.

    A linear stem, then hidden layers that each receive the condition additively,
    :math:`h_{k+1} = \sigma(W_k h_k + U_k\, e(t, y))`, and a linear head (zero-initialised:
    a fresh noise predictor or vector field outputs 0). ``e`` is :class:`ConditionEmbedding`.

    Args:
        features: the dimension D of x.
        hidden_features: widths of the hidden layers.
        num_classes: number of classes (``None``: unconditional); adds a null class.
        out_features: output size (defaults to D; 2D for a learned variance).
        embedding_dim: size of the condition embedding.
        activation: hidden activation (see :data:`probgen.nn.ACTIVATIONS`).
        time_scale: multiplies t before the sinusoidal features (1000 for t in [0, 1]).

    Shapes:
        ``x``: ``(batch, D)``; ``t``: ``(batch,)`` or a scalar; ``labels``: ``(batch,)``
        integers; output ``(batch, out_features)``.

    Example:
        >>> net = ConditionalMLP(2, [32, 32], num_classes=2)
        >>> net(torch.randn(5, 2), torch.rand(5), labels=torch.tensor([0, 1, 2, 0, 1])).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (128, 128, 128),
        num_classes: int | None = None,
        out_features: int | None = None,
        embedding_dim: int = 128,
        activation: str = "silu",
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden_features]
        if not hidden:
            raise ValueError("hidden_features: expected at least one hidden layer, got none.")
        self.features = int(features)
        self.out_features = int(out_features or features)
        self.event_shape = (self.features,)
        _activation(activation)
        self.embed = ConditionEmbedding(embedding_dim, num_classes, time_scale)
        self.stem = nn.Linear(self.features, hidden[0])
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(hidden[:-1], hidden[1:],
                                                                    strict=True))
        self.conds = nn.ModuleList(nn.Linear(embedding_dim, h) for h in hidden)
        self.act = _activation(activation)
        self.head = zero_init_(nn.Linear(hidden[-1], self.out_features))

    @property
    def num_classes(self) -> int | None:
        """Number of classes (``None``: unconditional); the null class is this index."""
        return self.embed.num_classes

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """The output at ``x``, time ``t`` and class ``labels`` (``None``: the null class)."""
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"x: expected shape (batch, {self.features}), got "
                             f"{tuple(x.shape)}.")
        t = check_time(t, x)
        e = self.embed(t.to(x.dtype), labels)
        first, *rest = self.conds  # (a slice of a ModuleList builds a new one every call)
        h = self.act(self.stem(x) + first(e))
        for layer, cond in zip(self.layers, rest, strict=True):
            h = self.act(layer(h) + cond(e))
        return self.head(h)
