"""A DreamerV3-style RSSM written outside the library, against docs/contract.md only.

Layout (DreamerV3 / sheeprl):

- vector encoder: observation keys sorted, flattened, concatenated, symlog-ed, then
  ``mlp_layers`` x (bias-free Linear -> LayerNorm(eps 1e-3) -> SiLU);
- recurrent model: input block bias-free Linear -> LayerNorm -> SiLU over ``[z_{t-1}, clip(a_{t-1})]``,
  then a LayerNorm GRU cell over ``[h_{t-1}, x']`` (update gate biased by -1);
- prior MLP from ``h_t``; posterior MLP from ``[h_t, embed_t]`` (both return raw logits);
- reward head: symlog two-hot over ``reward_bins`` bins in [-20, 20], output layer zeroed;
- continuation head: Bernoulli logit;
- a vector decoder (symlog space) for the reconstruction term of ``loss``;
- features ``[h, z]``.

Sampling, unimix and the episode-start reset in ``loss`` are written here from the contract's
description of the core's step, because the core's helpers (``rollout.observe``,
``distributions.balanced_kl``) have no documented signatures.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from latent_residual.contract import LatentSpec, WorldModel

EPS = 1e-3


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1)


def dense(inputs: int, units: int, layers: int) -> nn.Sequential:
    """``layers`` x (bias-free Linear, LayerNorm eps 1e-3, SiLU)."""
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules += [nn.Linear(inputs, units, bias=False), nn.LayerNorm(units, eps=EPS), nn.SiLU()]
        inputs = units
    return nn.Sequential(*modules)


class LayerNormGRUCell(nn.Module):
    """DreamerV3's GRU: one bias-free Linear over [h, x] to 3H gates, normalised together."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden + inputs, 3 * hidden, bias=False)
        self.norm = nn.LayerNorm(3 * hidden, eps=EPS)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gates = self.norm(self.linear(torch.cat([h, x], -1)))
        reset, cand, update = gates.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1)
        return update * cand + (1 - update) * h


class Head(nn.Module):
    """MLP body then a biased output layer."""

    def __init__(self, inputs: int, units: int, layers: int, outputs: int, zero: bool = False):
        super().__init__()
        self.body = dense(inputs, units, layers)
        self.out = nn.Linear(units if layers else inputs, outputs)
        if zero:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class ExternalRSSM(WorldModel):
    """DreamerV3's RSSM over vector observations (a Dict of float Boxes)."""

    posterior_uses_deter = True  # the posterior reads h
    memoryless = False  # features read h: a deployed policy carries (h, z)

    def __init__(
        self,
        observation_space,
        action_space,
        *,
        deter: int = 32,
        hidden: int = 32,
        units: int = 32,
        stoch: int = 4,
        classes: int = 4,
        mlp_layers: int = 1,
        reward_bins: int = 255,
        dyn_scale: float = 0.5,
        rep_scale: float = 0.1,
        free_bits: float = 1.0,
    ):
        super().__init__()
        self.keys = sorted(observation_space.spaces)
        self.shapes = {key: tuple(observation_space[key].shape) for key in self.keys}
        self.sizes = {key: int(math.prod(shape)) for key, shape in self.shapes.items()}
        obs_size = sum(self.sizes.values())
        self.latent = LatentSpec(stoch, classes)
        self.action_size = int(action_space.shape[0])
        self.feature_size = deter + stoch * classes
        self.unimix = 0.01
        self.dyn_scale, self.rep_scale, self.free_bits = dyn_scale, rep_scale, free_bits

        self.encoder = dense(obs_size, units, mlp_layers)
        self.inputs = dense(stoch * classes + self.action_size, units, 1)  # Linear -> LayerNorm -> SiLU
        self.cell = LayerNormGRUCell(units, deter)
        self.prior = Head(deter, hidden, 1, stoch * classes)
        self.post = Head(deter + units, hidden, 1, stoch * classes)
        self.reward_head = Head(self.feature_size, units, mlp_layers, reward_bins, zero=True)
        self.cont_head = Head(self.feature_size, units, mlp_layers, 1)
        self.decoder = Head(self.feature_size, units, mlp_layers, obs_size)
        self.initial_deter = nn.Parameter(torch.zeros(deter))
        self.register_buffer("bins", torch.linspace(-20.0, 20.0, reward_bins), persistent=False)

    # -- the contract -------------------------------------------------------------------------

    def _logits(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.reshape(*flat.shape[:-1], self.latent.groups, self.latent.classes)

    def initial_state(self, batch_size: int):
        h = torch.tanh(self.initial_deter).expand(batch_size, -1)
        mode = self._logits(self.prior(h)).argmax(-1)
        z = F.one_hot(mode, self.latent.classes).to(h.dtype)
        return {"deter": h, "stoch": z}

    def embed(self, obs):
        flat = [
            obs[key].float().flatten(-len(self.shapes[key])) if self.shapes[key] else obs[key].float()[..., None]
            for key in self.keys
        ]
        return self.encoder(symlog(torch.cat(flat, -1)))

    def dynamics(self, state, action, is_first):
        x = self.inputs(torch.cat([state["stoch"].flatten(1), action.clamp(-1, 1)], -1))
        h = self.cell(x, state["deter"])
        return self._logits(self.prior(h)), {"deter": h}  # raw logits: the residual adds to these

    def posterior(self, deter, embed):
        return self._logits(self.post(torch.cat([deter["deter"], embed], -1)))

    def next_state(self, deter, prior_logits, stoch):
        return {"deter": deter["deter"], "stoch": stoch}

    def features(self, state):
        return torch.cat([state["deter"], state["stoch"].flatten(1)], -1)

    def reward(self, features):
        probs = torch.softmax(self.reward_head(features), -1)
        return symexp((probs * self.bins).sum(-1))

    def continuation(self, features):
        return torch.sigmoid(self.cont_head(features)).squeeze(-1)

    def decode(self, features):
        out = symexp(self.decoder(features))
        parts = out.split([self.sizes[key] for key in self.keys], -1)
        return {key: part.reshape(*part.shape[:-1], *self.shapes[key]) for key, part in zip(self.keys, parts)}

    def dynamics_parameters(self):
        return [*self.inputs.parameters(), *self.cell.parameters(), *self.prior.parameters(), self.initial_deter]

    # -- training -----------------------------------------------------------------------------

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, -1)
        return (1 - self.unimix) * probs + self.unimix / self.latent.classes

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        probs = self._probs(logits)
        index = torch.distributions.Categorical(probs=probs).sample()
        one_hot = F.one_hot(index, self.latent.classes).to(probs.dtype)
        return one_hot + probs - probs.detach()  # straight through

    @staticmethod
    def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """KL(p || q) of probability tensors (..., groups, classes), summed over groups."""
        return (p * (torch.log(p) - torch.log(q))).sum((-2, -1))

    def _two_hot(self, target: torch.Tensor) -> torch.Tensor:
        x = symlog(target).clamp(self.bins[0], self.bins[-1])
        index = torch.searchsorted(self.bins, x.contiguous(), right=True).clamp(1, len(self.bins) - 1)
        low, high = self.bins[index - 1], self.bins[index]
        weight_high = ((x - low) / (high - low)).clamp(0, 1)
        out = torch.zeros(*x.shape, len(self.bins), device=x.device)
        out.scatter_(-1, (index - 1)[..., None], (1 - weight_high)[..., None])
        out.scatter_add_(-1, index[..., None], weight_high[..., None])
        return out

    def loss(self, batch):
        """DreamerV3's world-model loss on a (B, T) batch; without ``reward``, no reward term."""
        missing = [key for key in [*self.keys, "action", "is_first"] if key not in batch]
        if missing:
            raise KeyError(f"loss: batch lacks {missing}")
        obs = {key: batch[key] for key in self.keys}
        embed = self.embed(obs)
        actions = batch["action"].float()
        is_first = batch["is_first"].bool()
        B, T = is_first.shape
        state = self.initial_state(B)
        priors, posts, feats = [], [], []
        for t in range(T):
            first = is_first[:, t] if t else torch.ones(B, dtype=torch.bool, device=is_first.device)
            init = self.initial_state(B)
            state = {
                key: torch.where(first.view(-1, *[1] * (value.dim() - 1)), init[key], value)
                for key, value in state.items()
            }
            prev = actions[:, t - 1] if t else torch.zeros_like(actions[:, 0])
            prev = torch.where(first[:, None], torch.zeros_like(prev), prev)
            prior_logits, deter = self.dynamics(state, prev, first)
            post_logits = self.posterior(deter, embed[:, t])
            state = self.next_state(deter, prior_logits, self._sample(post_logits))
            priors.append(prior_logits)
            posts.append(post_logits)
            feats.append(self.features(state))
        prior_p = self._probs(torch.stack(priors, 1))
        post_p = self._probs(torch.stack(posts, 1))
        feats = torch.stack(feats, 1)
        mask = (~is_first).float()
        mask[:, 0] = 0.0
        denom = mask.sum().clamp(min=1.0)
        dyn = (self._kl(post_p.detach(), prior_p).clamp(min=self.free_bits) * mask).sum() / denom
        rep = (self._kl(post_p, prior_p.detach()).clamp(min=self.free_bits) * mask).sum() / denom
        kl = self.dyn_scale * dyn + self.rep_scale * rep

        target = symlog(torch.cat([obs[key].float().reshape(B, T, -1) for key in self.keys], -1))
        recon = ((self.decoder(feats) - target) ** 2).sum(-1).mean()
        terminal = batch.get("is_terminal", torch.zeros_like(is_first)).float()
        cont = F.binary_cross_entropy_with_logits(self.cont_head(feats).squeeze(-1), 1 - terminal)
        total = recon + cont + kl
        metrics = {
            "recon": recon.detach(),
            "cont": cont.detach(),
            "kl": kl.detach(),
            "dyn": dyn.detach(),
            "rep": rep.detach(),
        }
        if "reward" in batch:
            logp = torch.log_softmax(self.reward_head(feats), -1)
            reward = -(self._two_hot(batch["reward"].float()) * logp).sum(-1).mean()
            total = total + reward
            metrics["reward"] = reward.detach()
        metrics["loss"] = total.detach()
        return total, {key: float(value) for key, value in metrics.items()}
