"""Runs every docstring example of every probgen module, imported by its installed name."""

from __future__ import annotations

import doctest
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"probgen": "probgen", "models": "probgen.models", "inference": "probgen.inference"}


def _names() -> list[str]:
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts]
            parts = [p for p in parts if p != "__init__"]
            out.append(".".join([package, *parts]))
    return out


@pytest.mark.parametrize("name", _names())
def test_doctests(name):
    module = importlib.import_module(name)
    torch.manual_seed(0)
    result = doctest.testmod(
        module,
        extraglobs={"torch": torch},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


# No docstring example may depend on the last bits of a floating-point result: they change
# with the CPU, the BLAS/LAPACK build and the libm (``fid(x, x)`` printed ``0.0`` on one
# machine and ``1.7763568394002505e-15`` on another). An expected output may show a computed
# float only rounded explicitly (``round(v, 6)``, ``t.round(decimals=4)``, ``f"{v:.3f}"``)
# or through a tolerance that prints a bool (``torch.allclose``, ``abs(v - c) < 1e-6``).
# Read statically from each example's source and expected output, that means:
#   1. no float with an exponent (a tiny residual like 1.8e-15, or torch's scientific mode);
#   2. no float with more than 8 significant digits (a full-precision repr);
#   3. unless the source rounds, every float shown must be a float literal of the source
#      echoed back, or sit in a tensor that torch prints to 4 decimals. A float tensor that
#      prints without decimals (``tensor(6.)``, ``tensor([2., 0.])``) counts as unrounded:
#      torch prints it that way only while every entry is exactly integral.
# Outputs that are exact by construction (masks, counts, dyadic arithmetic) are listed in
# EXACT_FLOAT_OUTPUTS, each with its reason.

_FLOAT = re.compile(
    r"(?<![\w.])[-+]?(?:\d[\d_]*\.\d*|\.\d+|\d[\d_]*(?=[eE]))(?:[eE][-+]?\d+)?(?![\w.])"
)
_ROUNDED = re.compile(r"\bround\(|\.\d+[eEfFgG%][}\"']|%[-+ #0]*\d*\.\d+[eEfFgG]")

# (docstring name, example source) -> why its floats are exact on every machine.
EXACT_FLOAT_OUTPUTS = {
    ("probgen.metrics.integrate.parse_bounds", "parse_bounds(4)"):
        "echoes its integer argument as floats",
    ("probgen.metrics.integrate.parse_bounds", "parse_bounds((-1, 2))"):
        "echoes its integer arguments as floats",
    ("probgen.metrics.likelihood.nats_to_bits", "nats_to_bits(math.log(2.0))"):
        "x / x for one double x is exactly 1",
    ("probgen.metrics.likelihood.nll", "nll(torch.tensor([-1.0, -3.0]))"):
        "the negated mean of two small integers",
    ("probgen.metrics.manifold.precision_recall", "precision_recall(x, x)"):
        "fractions of counted points (500 / 500)",
    ("probgen.nn.init.zero_init_", "float(layer(torch.ones(1, 3)).detach().abs().sum())"):
        "zeroed weights: every product and sum is exactly 0",
    ("probgen.inference.flow_matching.ode_sample", "res.samples[0].tolist(), res.nfe"):
        "Euler steps of 1/4 through a constant field: dyadic, exact",
    ("probgen.inference.sampling", "out.samples[0].tolist(), out.nfe"):
        "four halvings of 1: a power of two, exact",
    ("probgen.data.preprocess.binarize",
     "binarize(torch.tensor([0, 127, 128, 255], dtype=torch.uint8))"):
        "a 0/1 threshold of integers",
    ("probgen.nn.masked.causal_mask", "causal_mask(2)"): "a constructed 0/-inf mask",
    ("probgen.nn.masked.conv_mask", 'conv_mask(3, "A")[0, 0]'): "a constructed 0/1 mask",
    ("probgen.transforms.coupling.alternating_mask", "alternating_mask(5, 1)"):
        "a constructed 0/1 mask",
    ("probgen.transforms.coupling.checkerboard_mask", "checkerboard_mask((1, 2, 2))"):
        "a constructed 0/1 mask",
    ("probgen.transforms.coupling.channel_mask", "channel_mask((2, 1, 1), 1)[:, 0, 0]"):
        "a constructed 0/1 mask",
    ("probgen.models.pixelcnn.one_hot_pixels",
     "one_hot_pixels(torch.tensor([[[[0, 2]]]]), 3, torch.float32)[0, :, 0, 1]"):
        "a one-hot encoding",
    ("probgen.inference.vq.straight_through",
     "(3 * out).sum().backward(); out.detach(), z_e.grad"):
        "z_e + (z_q - z_e) is exactly z_q here (Sterbenz), and the gradient is 3 * 1",
    ("probgen.paths.AffinePath.sample", "s.x_t, s.dx_t"):
        "t = 1/4 between the points 0 and 1: dyadic, exact",
}


def _code_and_numbers(source: str) -> tuple[str, set[float]]:
    """The source with its comments blanked, and the values of its float literals."""
    lines = source.splitlines(keepends=True)
    numbers: set[float] = set()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return source, numbers
    for tok in tokens:
        text = tok.string.lower()
        if tok.type == tokenize.NUMBER and not text.startswith(("0x", "0o", "0b")) and (
            "." in text or "e" in text
        ) and not text.endswith("j"):
            numbers.add(abs(float(text)))
        elif tok.type == tokenize.COMMENT:
            (row, col), end = tok.start, tok.end[1]
            line = lines[row - 1]
            lines[row - 1] = line[:col] + " " * (end - col) + line[end:]
    return "".join(lines), numbers


def _tensor_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in re.finditer(r"\btensor\(", text):
        depth = 0
        for j in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                spans.append((match.start(), j + 1))
                break
    return spans


def _significant_digits(literal: str) -> int:
    mantissa = re.split(r"[eE]", literal.lstrip("+-"))[0].replace("_", "").replace(".", "")
    return len(mantissa.strip("0")) or 1


def float_output_problems(source: str, want: str) -> list[str]:
    """Why ``want`` (an expected output of ``source``) could depend on floating-point bits."""
    want = want.replace("...", " ")  # an ELLIPSIS after a float must not hide it
    found = list(_FLOAT.finditer(want))
    problems = []
    for match in found:
        literal = match.group()
        if re.search(r"[eE]", literal):
            problems.append(f"{literal}: a float with an exponent")
        elif _significant_digits(literal) > 8:
            problems.append(f"{literal}: {_significant_digits(literal)} significant digits")
    code, echoes = _code_and_numbers(source)
    if _ROUNDED.search(code):
        return problems
    decimal_tensors = [
        (a, b) for a, b in _tensor_spans(want) if re.search(r"\d\.\d", want[a:b])
    ]
    for match in found:
        if any(a <= match.start() < b for a, b in decimal_tensors):
            continue  # torch prints it rounded to 4 decimals
        if abs(float(match.group().replace("_", ""))) in echoes:
            continue  # a float literal of the source, echoed back
        problems.append(f"{match.group()}: a computed float shown unrounded")
    return problems


def _examples() -> list[tuple[str, doctest.Example]]:
    finder = doctest.DocTestFinder()
    out = []
    for name in _names():
        for test in finder.find(importlib.import_module(name)):
            out.extend((test.name, ex) for ex in test.examples
                       if ex.want and not ex.options.get(doctest.SKIP))
    return out


def test_doctests_show_no_unrounded_floats():
    bad = []
    for name, ex in _examples():
        if (name, ex.source.strip()) in EXACT_FLOAT_OUTPUTS:
            continue
        for problem in float_output_problems(ex.source, ex.want):
            bad.append(f"{name}: >>> {ex.source.strip()}\n    {problem}")
    assert not bad, (
        "docstring examples whose expected output depends on the last bits of a float "
        "(round it, print a tolerance check, or list it in EXACT_FLOAT_OUTPUTS if it is "
        "exact by construction):\n" + "\n".join(bad)
    )


def test_exact_float_outputs_are_current():
    flagged = {(name, ex.source.strip()) for name, ex in _examples()
               if float_output_problems(ex.source, ex.want)}
    stale = set(EXACT_FLOAT_OUTPUTS) - flagged
    assert not stale, f"EXACT_FLOAT_OUTPUTS entries that match no flagged example: {stale}"


_OLD_FID_DOCSTRING = """
    >>> x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
    >>> fid(x, x)
    0.0
"""


@pytest.mark.parametrize(("source", "want", "flagged"), [
    ("fid(x, x)", "0.0", True),  # printed 1.7763568394002505e-15 on another machine
    ("fid(x, x)", "0.0...", True),
    ("fid(x, x)", "1.7763568394002505e-15", True),
    ("fid(x, x)  # 0.0", "0.0", True),  # a comment is not a literal to echo
    ("round(fid(x, x), 6)", "0.0", False),
    ("abs(fid(x, x)) < 1e-6", "True", False),
    ("f'{fid(x, x):.3f}'", "'0.000'", False),
    ("trace_sqrt_product(4 * torch.eye(3), torch.eye(3))", "tensor(6., dtype=torch.float64)",
     True),
    ("trace_sqrt_product(4 * torch.eye(3), torch.eye(3)).round(decimals=6)",
     "tensor(6., dtype=torch.float64)", False),
    ("code_perplexity(torch.tensor([0, 1, 2, 3]), 4)", "tensor(4.)", True),
    ("m.sigma.tolist(), round(a, 4)", "([0.8999999761581421], 0.5)", True),
    ("d(x)", "tensor([1.0000e+00, 1.7764e-15])", True),
    ("t(x)", "tensor([-2.9444, -2.8728])", False),
    ("Permutation([1, 0])(torch.tensor([1.0, 2.0]))", "tensor([2., 1.])", False),
    ('dump_toml({"lr": 0.001})', "lr = 0.001", False),
    ("x.shape, x.dtype", "(torch.Size([512, 2]), torch.float32)", False),
    ("m.count, int(x.max())", "(1000, 16)", False),
    ("torch.allclose(a, b, atol=1e-5)", "True", False),
])
def test_float_output_problems(source, want, flagged):
    assert bool(float_output_problems(source, want + "\n")) is flagged


def test_float_output_problems_catches_the_old_fid_doctest():
    examples = doctest.DocTestParser().get_examples(_OLD_FID_DOCSTRING)
    assert [bool(float_output_problems(ex.source, ex.want)) for ex in examples] == [
        False, True]
