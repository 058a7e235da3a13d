"""A small run configuration of every registered model: the model contract's test cases."""

from __future__ import annotations

from typing import Any

__all__ = ["EXAMPLES"]

_MOONS = {"name": "moons", "eval_size": 64}
_DIGITS_LOGIT = {"name": "digits", "preprocess": "logit"}
_DIGITS_BINARY = {"name": "digits", "preprocess": "binarize"}
_DIGITS_SIGNED = {"name": "digits", "preprocess": "signed"}
_SMALL_UNET = {"base_channels": 8, "channel_mults": [1, 2]}

#: ``{model name: small run configuration}`` for every entry of ``probgen.models.MODELS``,
#: plus variants ``"NAME[network]"`` whose ``model`` table names the registered model and
#: swaps its network (the DiT, the ViT encoder and decoder on the same contract).
#:
#: Each value holds the run-file tables ``data``, ``model`` (without ``name``: the key is
#: the name), ``objective`` (default ``ml``) and ``sample`` (keywords of the model's
#: ``sample``, or of the score runs' Langevin sampler), and optionally ``log_prob``
#: (keywords of ``log_prob``). Everything is built small and from bundled data, so one
#: model's whole contract (``tests/test_model_contract.py``: checkpoint round trip, float64,
#: gradients of the training objective, seeded sampling, wrong-shape errors, a short
#: ``fit``) runs in seconds. Registering a model in ``MODELS`` means adding its entry here.
EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    # ---------------------------------------------------------------- normalizing flows
    "PlanarFlow": {"data": _MOONS, "model": {"transforms": 2}},
    "RadialFlow": {"data": _MOONS, "model": {"transforms": 2}},
    "LinearFlow": {"data": _MOONS, "model": {"transforms": 2}},
    "MAF": {"data": _MOONS, "model": {"transforms": 2, "hidden_features": [16, 16]}},
    "IAF": {"data": _MOONS, "model": {"transforms": 2, "hidden_features": [16, 16]}},
    "NICE": {"data": _MOONS, "model": {"transforms": 2, "hidden_features": [16, 16]}},
    "RealNVP": {"data": _MOONS, "model": {"transforms": 2, "hidden_features": [16, 16]}},
    "NSF": {"data": _MOONS, "model": {"transforms": 2, "hidden_features": [16, 16],
                                      "bins": 4}},
    "MultiscaleRealNVP": {"data": _DIGITS_LOGIT,
                          "model": {"scales": 2, "hidden_channels": 8, "blocks": 1}},
    "Glow": {"data": _DIGITS_LOGIT,
             "model": {"scales": 2, "steps": 2, "hidden_channels": 8}},
    # ---------------------------------------------------------------- continuous flows
    "FFJORD": {"data": _MOONS, "model": {"hidden_features": [16, 16], "method": "rk4",
                                         "step_size": 0.25, "adjoint": False}},
    "CNF": {"data": _MOONS, "model": {"hidden_features": [16, 16], "method": "rk4",
                                      "step_size": 0.25}},
    # ---------------------------------------------------------------- autoregressive
    "MADE": {"data": _DIGITS_BINARY, "model": {"hidden_features": [32]}},
    "PixelCNN": {"data": _DIGITS_BINARY,
                 "model": {"channels": 8, "layers": 2, "kernel_size": 3,
                           "first_kernel_size": 3}},
    "GatedPixelCNN": {"data": _DIGITS_BINARY,
                      "model": {"channels": 8, "layers": 2, "first_kernel_size": 3}},
    "ImageTransformer": {"data": _DIGITS_BINARY,
                         "model": {"dim": 16, "heads": 2, "layers": 1}},
    # ---------------------------------------------------------------- score models
    "ScoreMLP": {"data": _MOONS, "model": {"hidden_features": [16, 16]},
                 "objective": {"name": "dsm", "sigma": 0.1},
                 "sample": {"sampler": "langevin", "steps": 3}},
    "ConvScoreNet": {"data": {"name": "digits", "preprocess": "scale"},
                     "model": {"hidden_channels": 8, "embedding_dim": 8},
                     "objective": {"name": "ncsn", "num_sigmas": 3},
                     "sample": {"steps": 2}},
    # ---------------------------------------------------------------- GANs
    "MLPGAN": {"data": {"name": "8gaussians", "eval_size": 64},
               "model": {"hidden_features": [16, 16]},
               "objective": {"name": "gan", "n_critic": 2}},
    "DCGAN": {"data": _DIGITS_SIGNED, "model": {"latent_dim": 8, "hidden_channels": 8},
              "objective": {"name": "wgan_gp", "n_critic": 2}},
    # ---------------------------------------------------------------- latent variables
    "VAE": {"data": _DIGITS_BINARY,
            "model": {"latent_features": 4, "hidden_features": [16]},
            "objective": {"name": "elbo"}},
    # the ViT encoder and decoder on the VAE's contract
    "VAE[vit]": {"data": _DIGITS_BINARY,
                 "model": {"name": "VAE", "latent_features": 4, "encoder": "vit",
                           "decoder": "vit", "channels": 16, "blocks": 2},
                 "objective": {"name": "elbo"}},
    "GaussianMixtureModel": {"data": {"name": "8gaussians", "eval_size": 64},
                             "model": {"components": 3, "hidden_features": [16]},
                             "objective": {"name": "vem", "schedule": "joint"}},
    "VQVAE": {"data": _DIGITS_BINARY,
              "model": {"num_codes": 8, "code_dim": 4, "channels": 8, "downsample": 1,
                        "blocks": 1, "prior_channels": 8, "prior_layers": 2},
              "objective": {"name": "vqvae", "prior_start": 1}},
    "GumbelSoftmaxVAE": {"data": _DIGITS_BINARY,
                         "model": {"latents": 2, "categories": 3, "hidden_features": [16]},
                         "objective": {"name": "gumbel_elbo"}},
    # ---------------------------------------------------------------- diffusion
    # log_prob: two RK4 steps per schedule step (the log-SNR has kinks at the steps)
    "DDPM": {"data": _DIGITS_SIGNED, "model": {"num_steps": 10, **_SMALL_UNET},
             "objective": {"name": "ddpm"}, "sample": {"sampler": "ddim", "steps": 3},
             "log_prob": {"method": "rk4", "step_size": 1 / 18}},
    # a registered model with another network: the DiT on DDPM's contract
    "DDPM[dit]": {"data": _DIGITS_SIGNED,
                  "model": {"name": "DDPM", "num_steps": 10,
                            "network": {"name": "dit", "patch": 2, "hidden": 16, "depth": 1,
                                        "heads": 2}},
                  "objective": {"name": "ddpm"}, "sample": {"sampler": "ddim", "steps": 3},
                  "log_prob": {"method": "rk4", "step_size": 1 / 18}},
    "VectorDDPM": {"data": _MOONS,
                   "model": {"num_steps": 10, "hidden_features": [16, 16],
                             "embedding_dim": 8},
                   "objective": {"name": "ddpm"}, "sample": {"sampler": "ddim", "steps": 3},
                   "log_prob": {"method": "rk4", "step_size": 1 / 18}},
    # ---------------------------------------------------------------- score SDEs
    "VectorScoreSDE": {"data": _MOONS,
                       "model": {"hidden_features": [16, 16], "embedding_dim": 8},
                       "objective": {"name": "sde_dsm"},
                       "sample": {"sampler": "pc", "steps": 3},
                       "log_prob": {"method": "rk4", "step_size": 0.25}},
    "ImageScoreSDE": {"data": _DIGITS_SIGNED, "model": _SMALL_UNET,
                      "objective": {"name": "sde_dsm"},
                      "sample": {"sampler": "pc", "steps": 2},
                      "log_prob": {"method": "rk4", "step_size": 0.25}},
    # ---------------------------------------------------------------- flow matching
    "VectorFlowMatching": {"data": _MOONS,
                           "model": {"hidden_features": [16, 16], "embedding_dim": 8},
                           "objective": {"name": "cfm"},
                           "sample": {"method": "euler", "steps": 3},
                           "log_prob": {"method": "rk4", "step_size": 0.25}},
    "ImageFlowMatching": {"data": _DIGITS_SIGNED, "model": _SMALL_UNET,
                          "objective": {"name": "cfm"},
                          "sample": {"method": "euler", "steps": 2},
                          "log_prob": {"method": "rk4", "step_size": 0.25}},
}
