"""Peer libraries' import quirks on this machine, handled for the benchmarks.

torch-fidelity and pytorch-fid import torchvision at module level; the torchvision wheels
that install here are CUDA builds that cannot load their operators against torch
2.13.0+cpu. :func:`stub_torchvision` puts an empty stand-in module in ``sys.modules``
(only in the benchmark's own process) so that their metric functions, which use numpy,
scipy and torch only, can be imported and timed.
"""

from __future__ import annotations

import sys
import types

import torch


def stub_torchvision() -> None:
    """An empty stand-in for torchvision so the peers' metric modules import (see above)."""
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - any failure: the stand-in is used instead
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
    tv = types.ModuleType("torchvision")
    tv.__path__ = []  # a package
    datasets = types.ModuleType("torchvision.datasets")
    for cls in ("CIFAR10", "CIFAR100", "STL10"):
        setattr(datasets, cls, type(cls, (), {}))
    transforms = types.ModuleType("torchvision.transforms")
    transforms.__path__ = []
    functional = types.ModuleType("torchvision.transforms.functional")
    transforms.functional = functional
    # pytorch_fid.inception subclasses torchvision's Inception blocks at import time: any
    # name asked of the stand-in is an empty nn.Module subclass (never instantiated here).
    models = types.ModuleType("torchvision.models")
    models.__path__ = []
    inception = types.ModuleType("torchvision.models.inception")
    inception.__getattr__ = lambda name: type(name, (torch.nn.Module,), {})
    models.inception = inception
    tv.datasets, tv.transforms, tv.models = datasets, transforms, models
    sys.modules.update({"torchvision": tv, "torchvision.datasets": datasets,
                        "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional,
                        "torchvision.models": models,
                        "torchvision.models.inception": inception})
