"""The model zoo (installed as probgen.models): one file per family, one registry for the CLI."""

from __future__ import annotations

from probgen.flow_vae import FlowVAE, TolerantDelta
from probgen.models.autoregressive import (
    AutoregressiveDistribution,
    AutoregressiveModel,
    receptive_field,
)
from probgen.models.cnf import (
    CNF,
    CONTINUOUS_FLOWS,
    FFJORD,
    ConcatSquashField,
    ContinuousFlowModel,
    TimeMLPField,
)
from probgen.models.diffusion import (
    DDPM,
    DIFFUSION_MODELS,
    DiffusionModel,
    DiffusionVAE,
    VectorDDPM,
)
from probgen.models.discrete_vae import DISCRETE_LATENT_MODELS, GumbelSoftmaxVAE
from probgen.models.examples import EXAMPLES
from probgen.models.flow_matching import (
    FM_MODELS,
    FlowMatching,
    ImageFlowMatching,
    VectorFlowMatching,
)
from probgen.models.flows import (
    FLOWS,
    IAF,
    MAF,
    NICE,
    NSF,
    Glow,
    LinearFlow,
    MultiscaleRealNVP,
    PlanarFlow,
    RadialFlow,
    RealNVP,
)
from probgen.models.gan import (
    DCGAN,
    GAN,
    GAN_MODELS,
    MLPGAN,
    DCGANCritic,
    DCGANGenerator,
    MLPCritic,
    MLPGenerator,
    interpolate_latents,
    truncated_normal,
)
from probgen.models.gmm import GaussianMixtureModel, flower_mixture
from probgen.models.image_transformer import ImageTransformer
from probgen.models.made import MADE
from probgen.models.path_model import PathModel
from probgen.models.pixelcnn import GatedPixelCNN, PixelCNN
from probgen.models.score import SCORE_MODELS, ConvScoreNet, ScoreMLP
from probgen.models.sde import (
    SDE_MODELS,
    SDE_SAMPLERS,
    ImageScoreSDE,
    NoiseLevelScore,
    ScoreSDE,
    VectorScoreSDE,
)
from probgen.models.vae import (
    LATENT_MODELS,
    VAE,
    BernoulliLikelihood,
    CategoricalLikelihood,
    ContinuousBernoulliLikelihood,
    ConvDecoder,
    ConvEncoder,
    DiagonalNormalMixture,
    GaussianLikelihood,
    MLPDecoder,
    MLPEncoder,
    StandardNormalPrior,
    VampPrior,
    make_decoder,
    make_encoder,
    make_likelihood,
)
from probgen.models.vqvae import VQ_MODELS, VQVAE, VectorQuantizer

# Every family adds its name -> class table here; the CLI's [model] name looks up MODELS.
# Each registered name also has a small run configuration in EXAMPLES (models/examples.py),
# which tests/test_model_contract.py builds to check the model contract.
AUTOREGRESSIVE: dict[str, type[AutoregressiveModel]] = {
    "MADE": MADE,
    "PixelCNN": PixelCNN,
    "GatedPixelCNN": GatedPixelCNN,
    "ImageTransformer": ImageTransformer,
}
MODELS: dict[str, type] = {**FLOWS, **CONTINUOUS_FLOWS, **AUTOREGRESSIVE, **SCORE_MODELS,
                          **GAN_MODELS, **LATENT_MODELS, **VQ_MODELS, **DISCRETE_LATENT_MODELS,
                          **DIFFUSION_MODELS}
MODELS.update(SDE_MODELS)
MODELS.update(FM_MODELS)

__all__ = [
    "EXAMPLES",
    "DIFFUSION_MODELS",
    "DiffusionModel",
    "DiffusionVAE",
    "DDPM",
    "VectorDDPM",
    "LATENT_MODELS",
    "GaussianMixtureModel",
    "flower_mixture",
    "VQ_MODELS",
    "DISCRETE_LATENT_MODELS",
    "GumbelSoftmaxVAE",
    "VQVAE",
    "VectorQuantizer",
    "VAE",
    "MLPEncoder",
    "ConvEncoder",
    "MLPDecoder",
    "ConvDecoder",
    "make_encoder",
    "make_decoder",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "CategoricalLikelihood",
    "make_likelihood",
    "StandardNormalPrior",
    "VampPrior",
    "DiagonalNormalMixture",
    "FM_MODELS",
    "FlowMatching",
    "VectorFlowMatching",
    "ImageFlowMatching",
    "GAN_MODELS",
    "GAN",
    "MLPGAN",
    "DCGAN",
    "MLPGenerator",
    "MLPCritic",
    "DCGANGenerator",
    "DCGANCritic",
    "truncated_normal",
    "interpolate_latents",
    "MODELS",
    "FLOWS",
    "FlowVAE",
    "TolerantDelta",
    "PlanarFlow",
    "RadialFlow",
    "LinearFlow",
    "MAF",
    "IAF",
    "NICE",
    "RealNVP",
    "NSF",
    "MultiscaleRealNVP",
    "Glow",
    "CONTINUOUS_FLOWS",
    "ContinuousFlowModel",
    "FFJORD",
    "CNF",
    "ConcatSquashField",
    "TimeMLPField",
    "AUTOREGRESSIVE",
    "AutoregressiveModel",
    "AutoregressiveDistribution",
    "receptive_field",
    "MADE",
    "PixelCNN",
    "GatedPixelCNN",
    "ImageTransformer",
    "SCORE_MODELS",
    "ScoreMLP",
    "ConvScoreNet",
    "SDE_MODELS",
    "SDE_SAMPLERS",
    "ScoreSDE",
    "PathModel",
    "VectorScoreSDE",
    "ImageScoreSDE",
    "NoiseLevelScore",
]
