"""The RSSM's hyperparameters: the ``RSSMConfig`` dataclass (defaults: DreamerV3's XL) and its named size presets.

No networks live here; they are in ``nets.py`` (cell, encoders, decoders, heads) and ``model.py`` (the world model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from latent_residual.config import ANGLES_HELP, PresetConfig

#: DreamerV3's model sizes (paper table; sheeprl's dreamer_v3_XS ... dreamer_v3_XL configs), 32 x 32 latents.
SIZES: dict[str, dict[str, Any]] = {
    "XS": {"deter": 256, "hidden": 256, "units": 256, "mlp_layers": 1, "cnn_multiplier": 24},
    "S": {"deter": 512, "hidden": 512, "units": 512, "mlp_layers": 2, "cnn_multiplier": 32},
    "M": {"deter": 1024, "hidden": 640, "units": 640, "mlp_layers": 3, "cnn_multiplier": 48},
    "L": {"deter": 2048, "hidden": 768, "units": 768, "mlp_layers": 4, "cnn_multiplier": 64},
    "XL": {},
}

#: What fits a 2-core CPU: XS with a narrower input block, heads and posterior, and a 16 x 16 latent.
CPU_OVERRIDES: dict[str, Any] = {"hidden": 128, "units": 128, "stoch": 16, "classes": 16}

#: Field overrides of each preset: ``tiny`` for tests, ``cpu`` for CPU pretraining, then DreamerV3's sizes.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "stoch": 4,
        "classes": 4,
        "deter": 16,
        "hidden": 16,
        "units": 16,
        "mlp_layers": 1,
        "cnn_multiplier": 2,
    },
    "cpu": {**SIZES["XS"], **CPU_OVERRIDES},
    **SIZES,
}


@dataclass
class RSSMConfig(PresetConfig, label="RSSM", presets=PRESETS, default="S"):
    """Hyperparameters of a DreamerV3 RSSM; the defaults are DreamerV3's XL size (sheeprl's ``dreamer_v3``).

    ``RSSMConfig.from_preset(preset="S", **overrides)`` builds a preset with fields replaced;
    checks and presets are ``latent_residual.config.PresetConfig``'s.
    """

    stoch: int = field(
        default=32, metadata={"help": "Number of categoricals in the latent z (sheeprl stochastic_size)."}
    )
    classes: int = field(default=32, metadata={"help": "Classes per categorical of z (sheeprl discrete_size)."})
    deter: int = field(
        default=4096, metadata={"help": "Size of the GRU's deterministic state h (sheeprl recurrent_state_size)."}
    )
    hidden: int = field(
        default=1024,
        metadata={"help": "Hidden width of the prior (transition) and posterior (representation) MLPs."},
    )
    units: int = field(
        default=1024,
        metadata={
            "help": "Width of the GRU's input block, the vector encoder and decoder and the reward and "
            "continuation heads (sheeprl dense_units)."
        },
    )
    mlp_layers: int = field(
        default=5,
        metadata={"help": "Linear-LayerNorm-SiLU blocks of the vector encoder, vector decoder and heads."},
    )
    cnn_multiplier: int = field(
        default=96,
        metadata={"help": "Channels of the first image conv; conv i has cnn_multiplier * 2**i channels."},
    )
    reward_bins: int = field(default=255, metadata={"help": "Symlog two-hot bins of the reward head."})
    unimix: float = field(
        default=0.01,
        metadata={"help": "Weight of the uniform mixture in the prior and posterior, in [0, 1)."},
    )
    decoupled: bool = field(
        default=False,
        metadata={
            "help": "The posterior reads the observation embedding alone, not [h, embed] (sheeprl "
            "decoupled_rssm); observe() then batches it."
        },
    )
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
        default=0.5, metadata={"help": "Weight of KL[sg(posterior) || prior], which trains the prior."}
    )
    rep_scale: float = field(
        default=0.1, metadata={"help": "Weight of KL[posterior || sg(prior)], which trains the posterior."}
    )
    free_bits: float = field(
        default=1.0, metadata={"help": "Each KL term is clipped from below at this many nats per step."}
    )
