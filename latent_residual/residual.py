"""The residual itself: ``ResidualConfig`` and the small network delta(z_{t-1}, a_{t-1}) -> logit offsets.

How a residual attaches to a frozen model, and how it is saved, is in ``adapters.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from latent_residual.errors import ConfigError

ADAPTER_TYPE = "latent_residual"
MODES = ("residual", "replacement")
#: How an ensemble's members are fitted (``ResidualConfig.ensemble_fit``).
ENSEMBLE_FITS = ("mean", "independent")


@dataclass
class ResidualConfig:
    """Settings of one residual adapter. Defaults follow the ReDRAW paper."""

    hidden: int = field(default=256, metadata={"help": "Width of the residual's hidden layer."})
    layers: int = field(default=1, metadata={"help": "Hidden Linear-LayerNorm-SiLU blocks (the paper uses 1)."})
    members: int = field(
        default=1, metadata={"help": "Ensemble members; their corrections are averaged (paper ablation: 1/4/7/10)."}
    )
    ensemble_fit: str = field(
        default="mean",
        metadata={
            "help": "How an ensemble is fitted: mean (the members' mean correction fits the data, as one wider "
            "network) or independent (each member fits the data on its own, so where they disagree the data left "
            "them free); the model predicts with the mean either way."
        },
    )
    extra_inputs: tuple[str, ...] = field(
        default=(),
        metadata={"help": "State keys fed to the residual besides z and the action, e.g. 'belief' (off in the paper)."},
    )
    mode: str = field(
        default="residual",
        metadata={
            "help": "'residual' adds the output to the frozen prior's logits; 'replacement' ignores the prior "
            "(the paper's ablation)."
        },
    )
    zero_init: bool = field(
        default=False, metadata={"help": "Zero the output layer so the adapted model starts equal to the base."}
    )
    prior_unimix: float = field(
        default=0.0,
        metadata={"help": "Uniform mixture on the corrected prior (the authors apply none after the correction)."},
    )
    adapter_type: str = field(default=ADAPTER_TYPE, metadata={"help": "Kind of adapter; stored in files."})
    format_version: int = field(default=1, metadata={"help": "Version of this config's layout."})

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "members"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ResidualConfig.{name} must be an integer >= 1, got {value!r}.")
        if self.ensemble_fit not in ENSEMBLE_FITS:
            raise ConfigError(
                f"ResidualConfig.ensemble_fit must be one of {', '.join(ENSEMBLE_FITS)}; got {self.ensemble_fit!r}."
            )
        if self.mode not in MODES:
            raise ConfigError(f"ResidualConfig.mode must be one of {', '.join(MODES)}; got {self.mode!r}.")
        if not 0.0 <= self.prior_unimix < 1.0:
            raise ConfigError(f"ResidualConfig.prior_unimix must be in [0, 1), got {self.prior_unimix!r}.")
        if isinstance(self.extra_inputs, str):
            raise ConfigError(
                f"ResidualConfig.extra_inputs must be a tuple of state keys, got the string {self.extra_inputs!r}."
            )
        self.extra_inputs = tuple(self.extra_inputs)
        if "stoch" in self.extra_inputs:
            raise ConfigError("ResidualConfig.extra_inputs: 'stoch' (z) is always an input; do not list it.")
        if self.adapter_type != ADAPTER_TYPE:
            raise ConfigError(f"ResidualConfig.adapter_type must be {ADAPTER_TYPE!r}, got {self.adapter_type!r}.")


class ResidualNet(nn.Module):
    """An ensemble of MLPs mapping [z_{t-1}, a_{t-1}, extras] to per-member logit offsets.

    Each member: Linear(hidden) -> LayerNorm -> SiLU (``layers`` times) -> Linear(groups * classes),
    with no norm on the output (poster eq. 16).
    """

    def __init__(self, config: ResidualConfig, in_size: int, groups: int, classes: int) -> None:
        super().__init__()
        self.groups, self.classes = groups, classes
        self.members = nn.ModuleList()
        for _ in range(config.members):
            blocks: list[nn.Module] = []
            size = in_size
            for _ in range(config.layers):
                blocks += [nn.Linear(size, config.hidden), nn.LayerNorm(config.hidden), nn.SiLU()]
                size = config.hidden
            out = nn.Linear(size, groups * classes)
            if config.zero_init:
                nn.init.zeros_(out.weight)
                nn.init.zeros_(out.bias)
            self.members.append(nn.Sequential(*blocks, out))

    def forward(self, inputs: Tensor) -> Tensor:
        """Map (B, in_size) inputs to (members, B, groups, classes) logit offsets."""
        B = inputs.shape[0]
        if len(self.members) == 1:  # no stack: its copy and backward cost 2-3% of a policy update
            return self.members[0](inputs).reshape(1, B, self.groups, self.classes)
        return torch.stack([member(inputs) for member in self.members]).reshape(
            len(self.members), B, self.groups, self.classes
        )
