"""DRAW's hyperparameters: the ``DRAWConfig`` dataclass (defaults from the paper) and its named presets.

No networks live here; they are in ``nets.py`` (encoders, decoders) and ``model.py`` (the world model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from latent_residual.config import ANGLES_HELP, PresetConfig

#: Field overrides of each preset: ``tiny`` for tests, ``small`` for CPU work, ``paper`` as published.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "groups": 8,
        "classes": 4,
        "hidden": 32,
        "cnn_depth": 4,
        "mlp_units": 32,
        "mlp_layers": 2,
        "head_units": 32,
        "head_layers": 1,
    },
    "small": {
        "groups": 64,
        "classes": 4,
        "hidden": 256,
        "cnn_depth": 16,
        "mlp_units": 256,
        "mlp_layers": 3,
        "head_units": 256,
        "head_layers": 2,
    },
    "paper": {},
}


@dataclass
class DRAWConfig(PresetConfig, label="DRAW", presets=PRESETS, default="paper"):
    """Hyperparameters of a DRAW world model; the defaults are the authors' vision-DMC setup.

    ``DRAWConfig.from_preset(preset="paper", **overrides)`` builds a preset with fields replaced;
    checks and presets are ``latent_residual.config.PresetConfig``'s.
    """

    groups: int = field(default=256, metadata={"help": "Number of categoricals in the latent z."})
    classes: int = field(default=4, metadata={"help": "Classes per categorical of the latent z."})
    hidden: int = field(default=512, metadata={"help": "Width of the prior (dynamics) and posterior networks."})
    dynamics_layers: int = field(
        default=2, metadata={"help": "Linear-LayerNorm-SiLU blocks of the prior before its logits."}
    )
    posterior_layers: int = field(
        default=1, metadata={"help": "Linear-LayerNorm-SiLU blocks of the posterior before its logits."}
    )
    unimix: float = field(
        default=0.01,
        metadata={"help": "Weight of the uniform mixture in the prior and posterior, in [0, 1)."},
    )
    cnn_depth: int = field(
        default=32, metadata={"help": "Channels of the first image conv; each later conv doubles them."}
    )
    cnn_layers: int = field(
        default=4,
        metadata={
            "help": "Stride-2 convs of the image encoder (and transposed convs of the decoder); "
            "image sides must be divisible by 2**cnn_layers."
        },
    )
    mlp_units: int = field(default=1024, metadata={"help": "Width of the vector encoder and decoder MLPs."})
    mlp_layers: int = field(default=5, metadata={"help": "Hidden layers of the vector encoder and decoder."})
    head_units: int = field(default=512, metadata={"help": "Width of the reward and continuation heads."})
    head_layers: int = field(default=2, metadata={"help": "Hidden layers of the reward and continuation heads."})
    reward_bins: int = field(default=255, metadata={"help": "Symlog two-hot bins of the reward head."})
    recon_scale: float = field(default=1.0, metadata={"help": "Weight of the reconstruction loss."})
    recon_key_scales: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": "Weight of each named observation key's reconstruction within it (1 for a key not named): a "
            "quantity the task turns on but the loss barely sees, like the reacher's small to_target, may need more."
        },
    )
    angles: dict[str, list[int]] = field(default_factory=dict, metadata={"help": ANGLES_HELP})
    reward_scale: float = field(default=1.0, metadata={"help": "Weight of the reward loss."})
    cont_scale: float = field(default=1.0, metadata={"help": "Weight of the continuation loss."})
    dyn_scale: float = field(
        default=1.5, metadata={"help": "Weight of KL[sg(posterior) || prior], which trains the prior."}
    )
    rep_scale: float = field(
        default=0.5, metadata={"help": "Weight of KL[posterior || sg(prior)], which trains the posterior."}
    )
    free_bits: float = field(
        default=1.0, metadata={"help": "Each KL term is clipped from below at this many nats per step."}
    )
