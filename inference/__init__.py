"""Objectives, samplers and the one trainer: ``fit``, maximum likelihood, reverse KL, score
matching, Langevin samplers, checkpoints, EMA."""

from __future__ import annotations

from probgen.inference import registry
from probgen.inference.adversarial import ADAM_BETAS, GAN_LOSSES, Adversarial
from probgen.inference.checkpoint import load_checkpoint
from probgen.inference.diffusion import (
    DIFFUSION_LOSSES,
    DIFFUSION_SAMPLERS,
    VARIANCES,
    DiffusionLoss,
    DiffusionResult,
    NoisyClassifierLoss,
    ddim_invert,
    diffusion_sample,
    guided_epsilon,
    variational_bound,
)
from probgen.inference.elbo import ELBO, DifferentiableRenyiELBO, LatentScale
from probgen.inference.em import ExactEM, VariationalEM
from probgen.inference.ema import EMA
from probgen.inference.flow_matching import (
    FIXED_STEP_METHODS,
    FM_METHODS,
    ConditionalFlowMatching,
    ODEResult,
    ode_sample,
    reflow_pairs,
    straightness,
)
from probgen.inference.guidance import classifier_free, classifier_guided, drop_labels, guided
from probgen.inference.langevin import (
    SAMPLERS,
    LangevinResult,
    ScoreSampler,
    annealed_langevin,
    langevin,
    mala,
    score_from_log_prob,
)
from probgen.inference.likelihood import MaximumLikelihood
from probgen.inference.optim import LRSchedule
from probgen.inference.registry import OBJECTIVES, register_objective
from probgen.inference.regularized import RegularizedMaximumLikelihood
from probgen.inference.reverse_kl import ReverseKL
from probgen.inference.score_matching import (
    DenoisingScoreMatching,
    ImplicitScoreMatching,
    NoiseConditionalScoreMatching,
    SlicedScoreMatching,
)
from probgen.inference.sde import (
    SDE_METHODS,
    WEIGHTINGS,
    ContinuousScoreMatching,
    SDEResult,
    predictor_corrector_sample,
    probability_flow_bits_per_dim,
    probability_flow_distribution,
    probability_flow_log_prob,
    probability_flow_sample,
    reverse_sde_sample,
    tweedie_denoise,
)
from probgen.inference.solvers import (
    DEFAULT_GRIDS,
    GRIDS,
    SOLVERS,
    SolverResult,
    solve_path,
    time_grid,
)
from probgen.inference.steps import NonFiniteLossError
from probgen.inference.training import History, fit
from probgen.inference.vq import (
    ExponentialTemperature,
    RelaxedCategoricalELBO,
    TwoStageVQLoss,
    VectorQuantizedLoss,
    code_perplexity,
    code_usage,
    encode_codes,
    fit_code_prior,
    straight_through,
    vq_losses,
)

__all__ = [
    "SOLVERS",
    "GRIDS",
    "DEFAULT_GRIDS",
    "SolverResult",
    "solve_path",
    "time_grid",
    "DiffusionLoss",
    "NoisyClassifierLoss",
    "DiffusionResult",
    "diffusion_sample",
    "ddim_invert",
    "variational_bound",
    "guided_epsilon",
    "DIFFUSION_LOSSES",
    "DIFFUSION_SAMPLERS",
    "VARIANCES",
    "Adversarial",
    "GAN_LOSSES",
    "ADAM_BETAS",
    "straight_through",
    "vq_losses",
    "code_perplexity",
    "code_usage",
    "ExponentialTemperature",
    "VectorQuantizedLoss",
    "TwoStageVQLoss",
    "RelaxedCategoricalELBO",
    "encode_codes",
    "fit_code_prior",
    "ELBO",
    "ConditionalFlowMatching",
    "ODEResult",
    "ode_sample",
    "guided",
    "classifier_free",
    "classifier_guided",
    "drop_labels",
    "reflow_pairs",
    "straightness",
    "FM_METHODS",
    "FIXED_STEP_METHODS",
    "ExactEM",
    "VariationalEM",
    "DifferentiableRenyiELBO",
    "LatentScale",
    "fit",
    "registry",
    "OBJECTIVES",
    "register_objective",
    "History",
    "NonFiniteLossError",
    "load_checkpoint",
    "EMA",
    "LRSchedule",
    "MaximumLikelihood",
    "RegularizedMaximumLikelihood",
    "ReverseKL",
    "ImplicitScoreMatching",
    "SlicedScoreMatching",
    "DenoisingScoreMatching",
    "NoiseConditionalScoreMatching",
    "langevin",
    "mala",
    "annealed_langevin",
    "score_from_log_prob",
    "LangevinResult",
    "ScoreSampler",
    "SAMPLERS",
    "ContinuousScoreMatching",
    "WEIGHTINGS",
    "SDE_METHODS",
    "SDEResult",
    "reverse_sde_sample",
    "predictor_corrector_sample",
    "probability_flow_sample",
    "probability_flow_distribution",
    "probability_flow_log_prob",
    "probability_flow_bits_per_dim",
    "tweedie_denoise",
]
