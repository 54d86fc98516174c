"""The DDPG agent of HAQ (Wang et al., CVPR 2019, "HAQ: Hardware-Aware Automated Quantization
with Mixed Precision", Sec. 3.1 and 4), with the settings of the paper and its released code.

DDPG (Lillicrap et al. 2016): a deterministic actor ``mu(s)`` in [0, 1] (sigmoid output) and a
critic ``Q(s, a)``, each with two hidden layers of 300 units (ReLU); Adam at 1e-4 (actor) and
1e-3 (critic); soft target updates with tau = 0.01; discount 1 (the reward comes at the end of
the episode and every step shares it); mini-batches of 64 from a replay memory of 128 x the
number of layers; 20 warm-up episodes of uniform random actions, then the actor's action with
truncated-normal noise of sigma 0.5 x 0.99^(episode - warm-up), truncated to [0, 1].  The
rewards of a batch are centred by a moving average of the batch means (the variance-reduction
baseline of the released code, weight 0.5).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

HIDDEN = 300
LR_ACTOR, LR_CRITIC = 1e-4, 1e-3
TAU = 0.01
DISCOUNT = 1.0
BATCH = 64
MEMORY_PER_LAYER = 128
WARMUP = 20
SIGMA0, SIGMA_DECAY = 0.5, 0.99
BASELINE_ALPHA = 0.5


class Actor(nn.Module):
    def __init__(self, n_states: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_states, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, 1),
            nn.Sigmoid(),
        )

    def forward(self, s: Tensor) -> Tensor:
        return self.net(s)


class Critic(nn.Module):
    """``Q(s, a)``: the state and the action enter the first hidden layer side by side."""

    def __init__(self, n_states: int) -> None:
        super().__init__()
        self.fs = nn.Linear(n_states, HIDDEN)
        self.fa = nn.Linear(1, HIDDEN)
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))

    def forward(self, s: Tensor, a: Tensor) -> Tensor:
        return self.net(self.fs(s) + self.fa(a))


class Memory:
    """A ring buffer of transitions (s, a, r, s', done)."""

    def __init__(self, size: int, n_states: int) -> None:
        self.size = size
        self.s = np.zeros((size, n_states), np.float32)
        self.s2 = np.zeros((size, n_states), np.float32)
        self.a = np.zeros((size, 1), np.float32)
        self.r = np.zeros((size, 1), np.float32)
        self.done = np.zeros((size, 1), np.float32)
        self.n = 0

    def append(self, s: np.ndarray, a: float, r: float, s2: np.ndarray, done: bool) -> None:
        i = self.n % self.size
        self.s[i], self.a[i], self.r[i], self.s2[i], self.done[i] = s, a, r, s2, float(done)
        self.n += 1

    def __len__(self) -> int:
        return min(self.n, self.size)

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        idx = rng.integers(0, len(self), size=batch)
        return self.s[idx], self.a[idx], self.r[idx], self.s2[idx], self.done[idx]


def truncated_normal(mu: float, sigma: float, rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    """A draw of N(mu, sigma) truncated to [lo, hi] (by rejection; clipped after 1,000 tries)."""
    for _ in range(1000):
        x = rng.normal(mu, sigma)
        if lo <= x <= hi:
            return float(x)
    return float(np.clip(mu, lo, hi))


@dataclass
class UpdateStats:
    critic_loss: float
    actor_loss: float


class DDPG:
    """The agent: ``act`` picks an action, ``observe`` stores a transition, ``update`` learns."""

    def __init__(
        self, n_states: int, n_layers: int, seed: int = 0, *, warmup: int = WARMUP, batch: int = BATCH
    ) -> None:
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.actor, self.critic = Actor(n_states), Critic(n_states)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=LR_ACTOR)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=LR_CRITIC)
        self.memory = Memory(MEMORY_PER_LAYER * n_layers, n_states)
        self.warmup = warmup
        self.batch = batch
        self.baseline: float | None = None

    def sigma(self, episode: int) -> float:
        return SIGMA0 * SIGMA_DECAY ** max(0, episode - self.warmup)

    def act(self, state: np.ndarray, episode: int) -> float:
        """Uniform in [0, 1] during warm-up, then the actor's action with truncated noise."""
        if episode < self.warmup:
            return float(self.rng.uniform(0.0, 1.0))
        with torch.no_grad():
            mu = float(self.actor(torch.as_tensor(state, dtype=torch.float32)[None])[0, 0])
        return truncated_normal(mu, self.sigma(episode), self.rng)

    def greedy(self, state: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.actor(torch.as_tensor(state, dtype=torch.float32)[None])[0, 0])

    def observe(self, s: np.ndarray, a: float, r: float, s2: np.ndarray, done: bool) -> None:
        self.memory.append(s, a, r, s2, done)

    def update(self) -> UpdateStats | None:
        """One gradient step of critic and actor on a sampled batch, then the soft target
        update; None while the memory holds less than a batch."""
        if len(self.memory) < self.batch:
            return None
        s, a, r, s2, done = (torch.from_numpy(x) for x in self.memory.sample(self.batch, self.rng))
        mean = float(r.mean())
        self.baseline = mean if self.baseline is None else self.baseline + BASELINE_ALPHA * (mean - self.baseline)
        r = r - self.baseline
        with torch.no_grad():
            q_next = self.critic_target(s2, self.actor_target(s2))
            target = r + DISCOUNT * (1.0 - done) * q_next
        critic_loss = nn.functional.mse_loss(self.critic(s, a), target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        actor_loss = -self.critic(s, self.actor(s)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()

        for net, tgt in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            with torch.no_grad():
                for p, tp in zip(net.parameters(), tgt.parameters(), strict=True):
                    tp.mul_(1.0 - TAU).add_(p, alpha=TAU)
        return UpdateStats(float(critic_loss.detach()), float(actor_loss.detach()))
