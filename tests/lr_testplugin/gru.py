"""A small recurrent world model (an RSSM in miniature) that fulfils the contract.

It exists to prove the contract is not DRAW-shaped: a GRU carries a deterministic state.
"""

from __future__ import annotations

import torch
from torch import nn

from latent_residual import distributions, encodings
from latent_residual.contract import LatentSpec, WorldModel
from latent_residual.rollout import observe, prev_actions


class GRUWorldModel(WorldModel):
    def __init__(self, observation_space, action_space, groups: int = 4, classes: int = 3, deter: int = 16):
        super().__init__()
        self.keys = sorted(observation_space.spaces)
        self.obs_sizes = [int(observation_space[k].shape[0]) for k in self.keys]
        obs_size = sum(self.obs_sizes)
        self.latent = LatentSpec(groups, classes)
        self.action_size = int(action_space.shape[0])
        self.deter_size = deter
        self.feature_size = deter + self.latent.size
        self.encoder = nn.Linear(obs_size, 16)
        self.img_in = nn.Linear(self.latent.size + self.action_size, deter)
        self.cell = nn.GRUCell(deter, deter)
        self.prior_out = nn.Linear(deter, self.latent.size)
        self.post_out = nn.Linear(deter + 16, self.latent.size)
        self.reward_head = nn.Linear(self.feature_size, 1)
        self.cont_head = nn.Linear(self.feature_size, 1)
        self.decoder = nn.Linear(self.feature_size, obs_size)

    def initial_state(self, batch_size):
        device = self.prior_out.weight.device
        return {
            "deter": torch.zeros(batch_size, self.deter_size, device=device),
            "stoch": torch.zeros(batch_size, self.latent.groups, self.latent.classes, device=device),
        }

    def embed(self, obs):
        x = torch.cat([encodings.symlog(obs[k].float()) for k in self.keys], -1)
        return self.encoder(x)

    def dynamics(self, state, action, is_first):
        x = torch.relu(self.img_in(torch.cat([state["stoch"].flatten(1), action], -1)))
        deter = self.cell(x, state["deter"])
        logits = self.prior_out(deter).reshape(-1, self.latent.groups, self.latent.classes)
        return logits, {"deter": deter}

    def posterior(self, deter, embed):
        logits = self.post_out(torch.cat([deter["deter"], embed], -1))
        return logits.reshape(-1, self.latent.groups, self.latent.classes)

    def next_state(self, deter, prior_logits, stoch):
        return {"deter": deter["deter"], "stoch": stoch}

    def features(self, state):
        return torch.cat([state["deter"], state["stoch"].flatten(1)], -1)

    def reward(self, features):
        return self.reward_head(features).squeeze(-1)

    def continuation(self, features):
        return torch.sigmoid(self.cont_head(features)).squeeze(-1)

    def decode(self, features):
        out = self.decoder(features)
        return dict(zip(self.keys, out.split(self.obs_sizes, -1)))

    def loss(self, batch):
        embed = self.embed({k: batch[k] for k in self.keys})
        out = observe(self, prev_actions(batch["action"].float()), batch["is_first"], embed=embed)
        target = torch.cat([encodings.symlog(batch[k].float()) for k in self.keys], -1)
        recon = ((self.decoder(out["features"]) - target) ** 2).sum(-1).mean()
        kl_loss, _ = distributions.balanced_kl(
            distributions.log_probs(out["post_logits"], self.unimix),
            distributions.log_probs(out["prior_logits"], self.unimix),
            batch["is_first"],
            dyn_scale=0.5,
            rep_scale=0.1,
            free_bits=0.0,
        )
        loss = recon + kl_loss
        return loss, {"recon": recon.item(), "kl": kl_loss.item()}
