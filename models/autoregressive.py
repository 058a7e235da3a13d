"""Autoregressive image models: the shared base (likelihood, sampling, completion, probes)."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pyro.distributions import Bernoulli, Categorical, TorchDistribution
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from probgen.utils import check_int

__all__ = ["AutoregressiveModel", "AutoregressiveDistribution", "receptive_field"]


def _sample_shape(shape: Sequence[int] | int) -> torch.Size:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        return torch.Size(shape)
    except TypeError as e:
        raise TypeError(f"shape: expected an int or a tuple of ints, got {shape!r}.") from e


class AutoregressiveModel(nn.Module, abc.ABC):
    r"""Base of the autoregressive models: :math:`p(x) = \prod_i p(x_{o_i} | x_{o_{<i}})`.

    A model over discrete images (or vectors) of ``event_shape`` whose pixels take
    ``categories`` values: Bernoulli pixels (one logit each) when ``categories == 2``,
    categorical pixels (``categories`` logits each) otherwise. Pixels are generated in
    :attr:`order` (flat indices into the event); subclasses implement :meth:`encode` (data
    to the float network input) and :meth:`logits_from_input`, whose logits at pixel
    ``o_i`` must depend only on inputs at ``o_{<i}`` (tests check the Jacobian).

    ``log_prob`` (nats per image), ``sample``, completion of partly given images and the
    :class:`AutoregressiveDistribution` view follow from these.

    Args:
        event_shape: ``(C, H, W)`` for images, ``(D,)`` for vectors.
        categories: values per pixel (2: binary).
        classes: number of classes for class-conditional models (0: unconditional).
    """

    #: Convolutional models whose outputs at row ``i`` see only input rows ``<= i`` (and
    #: accept images of fewer rows) set this: the plain sampler then runs on the rows
    #: ``0..i`` only, which halves its work on average and changes no number.
    row_causal: bool = False

    def __init__(self, event_shape: Sequence[int], categories: int = 2, classes: int = 0) -> None:
        super().__init__()
        self._event_shape = torch.Size(int(s) for s in event_shape)
        if not self._event_shape or min(self._event_shape) < 1:
            raise ValueError(f"shape: expected positive sizes, got {list(event_shape)}.")
        self.categories = check_int("categories", categories, low=2)
        self.classes = check_int("classes", classes, low=0)
        self.register_buffer("order", torch.arange(self.num_pixels), persistent=False)

    # ------------------------------------------------------------------ to implement
    def encode(self, x: Tensor) -> Tensor:
        """Maps pixels ``(N, *event)`` (values ``0..K-1``) to the network input.

        Default: binary pixels as they are, categorical ones scaled to [-1, 1].
        """
        x = x.to(self._param_dtype())
        return x if self.categories == 2 else 2.0 * x / (self.categories - 1) - 1.0

    @abc.abstractmethod
    def logits_from_input(self, h: Tensor, context: Tensor | None = None) -> Tensor:
        """Logits from the encoded input: ``(N, *event)`` (binary) or ``(N, *event, K)``.

        ``context`` is the one-hot class, ``(N, classes)``, or None.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ properties
    @property
    def event_shape(self) -> torch.Size:
        """Shape of one image (or vector)."""
        return self._event_shape

    @property
    def num_pixels(self) -> int:
        """``D``, the number of discrete variables per example."""
        return math.prod(self._event_shape)

    def _param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return self.order.device

    # ------------------------------------------------------------------ checks
    def _check_x(self, x: Tensor, name: str = "x") -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}.")
        k = len(self._event_shape)
        if x.dim() < k or x.shape[x.dim() - k :] != self._event_shape:
            event = ", ".join(map(str, self.event_shape))
            raise ValueError(f"{name}: expected shape (..., {event}), got {tuple(x.shape)}.")
        if x.dtype == torch.bool:
            x = x.long()
        if x.numel():
            bad = (x < 0) | (x > self.categories - 1)
            if x.is_floating_point():
                bad = bad | (x != x.round())
            if bad.any():
                what = ("binary pixels in {0, 1}" if self.categories == 2
                        else f"integer pixels in 0..{self.categories - 1}")
                hint = (" (binarize the data first: probgen.data.binarize or dynamic_binarize)"
                        if self.categories == 2 else "")
                raise ValueError(f"{name}: {type(self).__name__} models {what}; got values in "
                                 f"[{float(x.min()):g}, {float(x.max()):g}]"
                                 f"{', some not integers' if x.is_floating_point() else ''}"
                                 f"{hint}.")
        return x

    def _check_context(self, context: Tensor | None, batch: torch.Size) -> Tensor | None:
        """The one-hot class ``(prod(batch), classes)`` from labels or one-hot vectors."""
        if not self.classes:
            if context is not None:
                raise ValueError(f"context: {type(self).__name__} is unconditional (classes=0),"
                                 " got a tensor.")
            return None
        if context is None:
            raise ValueError(f"context: {type(self).__name__} is class-conditional; expected "
                             f"labels of shape {tuple(batch)} (ints in 0..{self.classes - 1}) "
                             f"or one-hot vectors (..., {self.classes}), got None.")
        if not isinstance(context, Tensor):
            raise TypeError(f"context: expected a torch.Tensor, got {type(context).__name__}.")
        if context.is_floating_point() and context.shape[-1:] == (self.classes,):
            onehot = context
        elif not context.is_floating_point():
            if context.numel() and (context.min() < 0 or context.max() >= self.classes):
                raise ValueError(f"context: expected labels in 0..{self.classes - 1}, got "
                                 f"values in [{int(context.min())}, {int(context.max())}].")
            onehot = F.one_hot(context.long(), self.classes)
        else:
            raise ValueError(f"context: expected integer labels or one-hot vectors (..., "
                             f"{self.classes}), got a float tensor of shape "
                             f"{tuple(context.shape)}.")
        onehot = onehot.expand(*batch, self.classes).reshape(-1, self.classes)
        return onehot.to(device=self._device(), dtype=self._param_dtype())

    # ------------------------------------------------------------------ likelihood
    def logits(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Logits of every pixel's conditional given the pixels before it.

        Args:
            x: pixels ``(N, *event)``, values in ``0..categories-1``.
            context: class labels ``(N,)`` or one-hot ``(N, classes)`` (conditional models).

        Returns:
            Tensor: ``(N, *event)`` Bernoulli logits, or ``(N, *event, categories)``.
        """
        x = self._check_x(x)
        ctx = self._check_context(context, x.shape[:1])
        return self.logits_from_input(self.encode(x), ctx)

    def _pixel_distribution(self, logits: Tensor) -> Distribution:
        if self.categories == 2:
            return Bernoulli(logits=logits, validate_args=False)
        return Categorical(logits=logits, validate_args=False)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-likelihood in nats per example: the sum of the pixels' conditional log-probs.

        Args:
            x: pixels ``(*batch, *event)`` with values in ``0..categories-1`` (float or int).
            context: class labels ``(*batch,)`` or one-hot ``(*batch, classes)``.

        Returns:
            Tensor: ``(*batch,)``.

        Raises:
            ValueError: wrong shape, or values that are not pixels of this model (e.g.
                intensities 0..255 given to a binary model).
        """
        x = self._check_x(x)
        batch = x.shape[: x.dim() - len(self._event_shape)]
        flat = x.reshape(-1, *self._event_shape)
        ctx = self._check_context(context, batch)
        return self._log_prob_flat(flat, ctx).reshape(batch)

    def _log_prob_flat(self, x: Tensor, context: Tensor | None) -> Tensor:
        logits = self.logits_from_input(self.encode(x), context)
        target = x.to(logits.dtype) if self.categories == 2 else x.long()
        lp = self._pixel_distribution(logits).log_prob(target)
        return lp.reshape(x.shape[0], -1).sum(-1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x, context)

    def distribution(self, context: Tensor | None = None) -> AutoregressiveDistribution:
        """The model as a Pyro distribution (given ``context``)."""
        return AutoregressiveDistribution(self, context)

    # ------------------------------------------------------------------ sampling
    def _draw(self, logits: Tensor, u: Tensor) -> Tensor:
        """Inverse-CDF draw of one pixel per row from ``u ~ U[0, 1)`` (shape ``(N,)``)."""
        if self.categories == 2:
            return (u < torch.sigmoid(logits)).to(u.dtype)
        cdf = torch.softmax(logits, dim=-1).cumsum(-1)
        return (cdf < u[:, None]).sum(-1).clamp(max=self.categories - 1).to(u.dtype)

    def _completion(
        self, n: int, given: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """``(given, mask)`` flattened to ``(n, D)``; ``mask`` True where a pixel is given."""
        if given is None:
            if mask is not None:
                raise ValueError("mask: given without given=; pass the partial images too.")
            return None, None
        if not isinstance(given, Tensor):
            raise TypeError(f"given: expected a torch.Tensor, got {type(given).__name__}.")
        if mask is None:  # the course's convention: -1 marks a missing pixel
            mask = given >= 0
            given = torch.where(mask, given, torch.zeros_like(given))
        if not isinstance(mask, Tensor) or mask.shape != given.shape:
            raise ValueError(f"mask: expected a tensor of given's shape {tuple(given.shape)}, "
                             f"got {getattr(mask, 'shape', type(mask).__name__)}.")
        mask = mask.bool()
        given = torch.where(mask, given, torch.zeros_like(given))
        given = self._check_x(given, "given").reshape(-1, *self._event_shape)
        mask = mask.reshape(-1, *self._event_shape)
        if given.shape[0] not in (1, n):
            raise ValueError(f"given: expected one image {tuple(self.event_shape)} or {n} "
                             f"images, got {given.shape[0]}.")
        given = given.expand(n, *self._event_shape)
        mask = mask.expand(n, *self._event_shape)
        return given.reshape(n, -1), mask.reshape(n, -1).to(self._device())

    @torch.no_grad()
    def sample(
        self,
        shape: Sequence[int] | int = (),
        context: Tensor | None = None,
        *,
        given: Tensor | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draws images pixel by pixel, or completes partly given ones.

        Each missing pixel is drawn from :math:`p(x_i | x_{<i})` with the given pixels held
        fixed (they are never changed); this is the exact conditional when the given pixels
        precede the missing ones in the order (e.g. the top half of an image).
        Pixel ``r`` in the order is drawn by inverse CDF from the ``r``-th of ``D`` uniform
        numbers per image, drawn up front (so cached and uncached samplers agree exactly).

        Args:
            shape: sample shape (an int ``n`` means ``(n,)``).
            context: class labels ``(*b,)`` or one-hot ``(*b, classes)``; the samples then
                have shape ``(*shape, *b, *event)``.
            given: images to complete: one image ``event_shape`` or one per sample; with no
                ``mask``, entries ``-1`` are the missing pixels (the course's convention).
            mask: True where ``given`` holds a pixel to keep, same shape as ``given``.
            generator: for the uniform numbers.

        Returns:
            Tensor: ``(*shape, *b, *event)`` float pixels in ``0..categories-1``.
        """
        return self._sample(shape, context, given, mask, generator, self._sample_flat)

    def _sample(
        self,
        shape: Sequence[int] | int,
        context: Tensor | None,
        given: Tensor | None,
        mask: Tensor | None,
        generator: torch.Generator | None,
        sampler: Callable[..., Tensor],
    ) -> Tensor:
        """Checks the arguments, draws the uniforms and runs ``sampler`` on flat images."""
        shape = _sample_shape(shape)
        batch = shape
        if context is not None and self.classes:
            cb = context.shape if not context.is_floating_point() else context.shape[:-1]
            batch = shape + cb
            context = context.expand(*shape, *context.shape)
        n = math.prod(batch)
        ctx = self._check_context(context, batch)
        given_flat, mask_flat = self._completion(n, given, mask)
        dtype = self._param_dtype()
        u = torch.rand(n, self.num_pixels, generator=generator, dtype=dtype,
                       device=self._device())
        if given_flat is not None:
            given_flat = given_flat.to(device=self._device(), dtype=dtype)
        with torch.no_grad():
            x = sampler(n, ctx, given_flat, mask_flat, u, generator)
        return x.reshape(*batch, *self._event_shape)

    def _sample_flat(
        self, n: int, context: Tensor | None, given: Tensor | None, mask: Tensor | None,
        u: Tensor, generator: torch.Generator | None = None, order: Tensor | None = None,
        **net_kwargs: int,
    ) -> Tensor:
        """The plain sampler: one network pass per pixel, ``(n, D)`` -> ``(n, D)``.

        ``net_kwargs`` go to :meth:`logits_from_input` (e.g. a MADE's order index).
        """
        order = self.order if order is None else order
        x = given.clone() if given is not None else u.new_zeros(n, self.num_pixels)
        was_training = self.training
        self.eval()
        try:
            for r, i in enumerate(order.tolist()):
                if mask is not None and bool(mask[:, i].all()):
                    continue
                image = x.reshape(n, *self._event_shape)
                if self.row_causal:  # rows below pixel i cannot affect its logits: skip them
                    c, h, w = self._event_shape
                    row = (i % (h * w)) // w
                    image = image[:, :, : row + 1]
                    logits = self.logits_from_input(self.encode(image), context, **net_kwargs)
                    logits = logits.reshape(n, c, (row + 1) * w, -1)[:, i // (h * w),
                                                                     row * w + i % w]
                else:
                    logits = self.logits_from_input(self.encode(image), context, **net_kwargs)
                    logits = logits.reshape(n, self.num_pixels, -1)[:, i]
                drawn = self._draw(logits.squeeze(-1) if self.categories == 2 else logits,
                                   u[:, r])
                x[:, i] = drawn if mask is None else torch.where(mask[:, i], x[:, i], drawn)
        finally:
            self.train(was_training)
        return x

    def extra_repr(self) -> str:  # noqa: D102
        return (f"event_shape={tuple(self._event_shape)}, categories={self.categories}, "
                f"classes={self.classes}")


class AutoregressiveDistribution(TorchDistribution):
    """Creates the Pyro distribution view of an autoregressive model.

    ``log_prob`` and ``sample`` call the model; the batch shape is the context's, or the one
    ``expand`` gives (torch's rules), so it is the distribution of an observed or a latent
    ``pyro.sample`` site inside ``pyro.plate`` (``Predictive``, every poutine handler).

    Args:
        model: the :class:`AutoregressiveModel`.
        context: class labels or one-hot vectors (conditional models), or None.
        batch_shape: the batch shape (default: the context's leading shape, or ``()``);
            a context is expanded to it.

    Example:
        >>> from probgen.models import MADE
        >>> d = MADE((4,), hidden_features=[8]).distribution().expand([3])
        >>> d.batch_shape, d.sample((2,)).shape, d.log_prob(torch.zeros(4)).shape
        (torch.Size([3]), torch.Size([2, 3, 4]), torch.Size([3]))
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, model: AutoregressiveModel, context: Tensor | None = None,
                 batch_shape: Sequence[int] | None = None) -> None:
        self.model = model
        batch = torch.Size()
        if context is not None:
            batch = context.shape[:-1] if context.is_floating_point() else context.shape
        if batch_shape is not None:
            target = torch.Size(batch_shape)
            try:
                ok = torch.broadcast_shapes(batch, target) == target
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f"batch_shape: expected a shape that {tuple(batch)} expands "
                                 f"to (torch's rules), got {tuple(target)}.")
            if context is not None:
                tail = context.shape[-1:] if context.is_floating_point() else torch.Size()
                context = context.expand(*target, *tail)
            batch = target
        self.context = context
        super().__init__(batch, model.event_shape, validate_args=False)

    def expand(self, batch_shape: Sequence[int], _instance: Any = None
               ) -> AutoregressiveDistribution:
        """The same model with batch shape ``batch_shape`` (torch's rules; the context is
        expanded)."""
        return AutoregressiveDistribution(self.model, self.context, batch_shape)

    @property
    def support(self) -> constraints.Constraint:
        """Binary or integer-valued pixels."""
        if self.model.categories == 2:
            return constraints.independent(constraints.boolean, len(self.event_shape))
        return constraints.independent(
            constraints.integer_interval(0, self.model.categories - 1), len(self.event_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """The model's log-likelihood in nats of ``value`` ``(*sample, *batch, *event)``
        (broadcast against the batch shape), shape ``(*sample, *batch)``."""
        event = len(self.event_shape)
        leading = value.shape[: value.dim() - event]
        batch = torch.broadcast_shapes(leading, self.batch_shape)
        if batch != leading:
            value = value.expand(*batch, *self.event_shape)
        context = self.context
        if context is not None:
            tail = context.shape[-1:] if context.is_floating_point() else torch.Size()
            context = context.expand(*batch, *tail)
        return self.model.log_prob(value, context)

    def sample(self, sample_shape: torch.Size | Sequence[int] = (), *,
               generator: torch.Generator | None = None) -> Tensor:
        """Samples of shape ``(*sample_shape, *batch, *event)``, drawn from ``generator``
        when one is given."""
        if self.context is None:
            return self.model.sample(tuple(sample_shape) + tuple(self.batch_shape),
                                     generator=generator)
        return self.model.sample(tuple(sample_shape), self.context, generator=generator)


def receptive_field(
    model: AutoregressiveModel,
    pixel: Sequence[int],
    x: Tensor | None = None,
    context: Tensor | None = None,
    *,
    threshold: float = 1e-8,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Probes which input pixels one output pixel's logits depend on.

    Computes the gradient of the sum of the logits at ``pixel`` (all channels and
    categories) with respect to the model's encoded input, at ``x`` (default: a random
    image), and sums its absolute value over channels (and one-hot categories).

    Args:
        model: the model.
        pixel: ``(h, w)`` for images ``(C, H, W)``, ``(i,)`` for vectors.
        x: one image ``event_shape`` (default: uniform random pixels).
        context: the class (conditional models).
        threshold: a pixel is in the field where the gradient magnitude exceeds it (the
            course's 1e-8).
        generator: for the random image.

    Returns:
        tuple: ``(binary, weighted)`` maps of shape ``(H, W)`` (or ``(D,)``): a bool map of
        the field and the gradient magnitude scaled to max 1.
    """
    shape = model.event_shape
    spatial = shape[1:] if len(shape) == 3 else shape
    pixel = tuple(int(p) for p in pixel)
    if len(pixel) != len(spatial) or any(not 0 <= p < s for p, s in zip(pixel, spatial,
                                                                         strict=True)):
        raise ValueError(f"pixel: expected an index into {tuple(spatial)}, got {pixel}.")
    if x is None:
        x = torch.randint(0, model.categories, tuple(shape), generator=generator)
    x = model._check_x(x).reshape(1, *shape).to(model._device())
    ctx = model._check_context(context, torch.Size([1]))
    was_training = model.training
    model.eval()
    try:
        h = model.encode(x).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model.logits_from_input(h, ctx)
            out = logits[0][(slice(None), *pixel)] if len(shape) == 3 else logits[0][pixel]
            (grad,) = torch.autograd.grad(out.sum(), h)
    finally:
        model.train(was_training)
    g = grad[0].abs()
    g = g.reshape(*shape, -1).sum(-1) if g.dim() > len(shape) else g
    g = g.sum(0) if len(shape) == 3 else g
    weighted = g / g.max() if g.max() > 0 else g
    return g > threshold, weighted.detach()
