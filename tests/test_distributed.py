"""Data parallel: 2 gloo processes x batch B train exactly like 1 process x batch 2B."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from probgen.inference import fit, load_checkpoint

SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    from torch import nn

    from probgen.inference import fit


    class Regression(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))

        def forward(self, batch):
            x, y = batch
            loss = ((self.net(x).squeeze(-1) - y) ** 2).mean()
            return {"loss": loss, "mae": (self.net(x).squeeze(-1) - y).abs().mean()}


    class SelfStepping(Regression):
        # The same loss through the multi-player hook (gradients averaged by hand).

        def training_step(self, batch, step, update):
            out = self(batch)
            update("main", out["loss"])
            return {k: v.detach() for k, v in out.items()}


    def make(mode="default"):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(200, 3, generator=g)
        y = x.sum(-1).sin()
        return (Regression() if mode == "default" else SelfStepping()), (x, y)


    if __name__ == "__main__":
        model, data = make(sys.argv[4])
        fit(model, data, steps=int(sys.argv[2]), batch_size=int(sys.argv[3]), lr=0.01,
            grad_clip=1.0, eval_data=data, eval_every=4, log_every=2, out_dir=sys.argv[1],
            progress=False, seed=5)
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "custom"])
def test_two_gloo_processes_match_one_with_double_batch(tmp_path, mode):
    """DistributedDataParallel (default path) and the hand-averaged training_step path."""
    steps, batch = 6, 8
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "GLOO_SOCKET_IFNAME": "lo", "PYTHONWARNINGS": "error::UserWarning"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
           str(_free_port()), str(script), str(tmp_path / "ddp"), str(steps), str(batch), mode]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stderr, done.stderr[-3000:]

    sys.path.insert(0, str(tmp_path))
    try:
        import ddp_script
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("ddp_script", None)
    model, data = ddp_script.make()
    with torch.random.fork_rng():
        fit(model, data, steps=steps, batch_size=2 * batch, lr=0.01, grad_clip=1.0,
            eval_data=data, eval_every=4, log_every=2, out_dir=tmp_path / "one",
            progress=False, seed=5)
    state = load_checkpoint(tmp_path / "ddp")
    assert state["world_size"] == 2 and len(state["rng"]["ranks"]) == 2
    worst = max(float((state["objective"][k] - v).abs().max())
                for k, v in model.state_dict().items())
    print(f"max |ddp - single| = {worst:.3g}")
    assert worst < 1e-5
    ddp = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ddp] == [r["step"] for r in one]  # rank 0 alone wrote
    for a, b in zip(ddp, one, strict=True):
        for key in ("loss", "mae", "eval/loss", "grad_norm"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), key
