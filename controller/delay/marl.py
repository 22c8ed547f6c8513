"""``marl``: multi-agent reinforcement learning of PB placement (torch on the CPU).

The game. One agent per edge node builds its cache in rounds, starting empty: in each round
every agent simultaneously picks one PB to add (among the requested PBs it does not hold and
that still fit) or ``stop``. The team reward of a round is the drop of the mean delay
(:func:`~controller.delay.model.evaluate_delay`, reference rules) divided by the empty-cache
delay, so an episode's return is the relative delay reduction ``(D_empty - D_final)/D_empty``.
An episode ends when every agent stops or can add nothing. One round = one *environment
sample* (one delay evaluation of a joint placement).

Local observations (decentralised execution): agent n sees its own cache, its cluster's demand
(per PB, the share of all requests that users covered by n make for models containing it), the
holdings its neighbours announce (per PB, the share of n's neighbours holding it; neighbours =
nodes sharing a covered user), each PB's size relative to n's capacity, n's free capacity, the
round, and its own one-hot id. The agents share one Q-network ``Q(o_n, .)``.

Centralised training with a value-decomposition critic: QMIX mixing (Rashid et al. 2018), a
monotone mixer whose weights come from hypernetworks of the global state (all caches), so
``Q_tot(s, a) = mix_s(Q_1(o_1, a_1), ..., Q_N(o_N, a_N))`` models how the value of one node's
action depends on what the others hold (``mixer="vdn"`` sums instead). Double-Q targets, a
target network, replay. Exploration samples discrete actions with the Gumbel-max trick over
``Q / temperature`` (a Boltzmann policy; temperature annealed), invalid actions masked.

Data augmentation (``augment=True``): a learned predictive model of the reward, an MLP
``r(X, X')`` of the joint cache before and after a round trained on the real transitions
(the cache dynamics X' = X + actions are known exactly; only the delay is learned). From real
states it generates synthetic transitions with freshly sampled joint actions; each training
batch is then half real, half synthetic. Both variants make the same number of gradient
updates per environment sample, so a difference comes from the data, not the update count.

Rollouts. By default the team acts and learns step by step in this process. With
``MarlConfig(parallel_envs=n)`` the exploration episodes are played n at a time by the policy
as it is at the batch's start (:func:`_rollout`, each episode with its own seed), on the sweep
engine (:func:`controller.sweep.engine_session`: in process, or one Ray task per episode), and
the learner then learns from their transitions in episode order, so the engine does not change
the result.

The solver trains on the instance it is given and returns the placement of the best greedy
(exploration-free) rollout seen at the evaluation points. Everything is seeded: torch's
global generator is used only inside ``torch.random.fork_rng`` with ``manual_seed(seed)`` (the
caller's state is restored), replay sampling uses ``random.Random(seed)``, and torch runs with
one thread during training, so one seed gives bit-identical parameters (tested).
:func:`save_checkpoint` / :func:`load_checkpoint` are the only functions here that touch files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from controller.delay.model import DelayInstance
from controller.delay.problem import DelayProblem, DelayResult, delay_problem_to_json
from controller.delay.solvers import make_delay_result
from controller.sweep import check_engine, engine_session, last_built


@dataclass(frozen=True, slots=True)
class MarlConfig:
    """Training hyper-parameters (defaults train a 6-node instance in seconds)."""

    episodes: int = 120
    hidden: int = 64
    mixer: str = "qmix"  # or "vdn"
    mixing_embed: int = 32
    lr: float = 2e-3
    discount: float = 0.95
    batch: int = 64
    buffer: int = 20_000
    updates_per_step: int = 2
    target_every: int = 50  # gradient updates between target-network syncs
    temperature_start: float = 0.3
    temperature_end: float = 0.01
    eval_every: int = 5  # episodes between greedy evaluations
    augment: bool = False
    synthetic_per_real: int = 4
    model_warmup: int = 32  # real transitions before the reward model is used
    max_rounds: int = 24
    reward_scale: float = 10.0  # returns are relative delay drops (~0.1); scaled for the TD loss
    parallel_envs: int = 0  # 0: act and learn step by step; n: roll out n episodes per batch

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.eval_every < 1 or self.batch < 1 or self.hidden < 1:
            raise ValueError("marl: episodes, eval_every, batch and hidden must be >= 1")
        if self.parallel_envs < 0:
            raise ValueError("marl: parallel_envs must be >= 0")
        if self.mixer not in ("qmix", "vdn"):
            raise ValueError(f"marl: mixer must be 'qmix' or 'vdn', got {self.mixer!r}")


@dataclass(frozen=True, slots=True)
class LearningPoint:
    """A greedy evaluation during training: env samples used so far -> its return."""

    env_samples: int
    episode: int
    greedy_return: float
    greedy_mean_s: float


@dataclass
class Trained:
    """A trained team: networks, the instance layout they expect, and the learning curve."""

    config: MarlConfig
    units: tuple[str, ...]
    nodes: tuple[str, ...]
    agent: AgentNet
    mixer: nn.Module
    curve: list[LearningPoint] = field(default_factory=list)
    best_placement: dict[str, list[str]] = field(default_factory=dict)
    env_samples: int = 0

    def parameters_vector(self) -> torch.Tensor:
        """All parameters flattened (agent then mixer), for equality checks."""
        return torch.cat(
            [p.detach().flatten() for p in self.agent.parameters()]
            + [p.detach().flatten() for p in self.mixer.parameters()]
        )


class AgentNet(nn.Module):
    """The shared per-agent Q-network: local observation -> Q over (PBs..., stop)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_actions),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(obs)
        return out


class QMixer(nn.Module):
    """Monotone mixing of agent Q-values with state-conditioned (hypernetwork) weights."""

    def __init__(self, n_agents: int, state_dim: int, embed: int) -> None:
        super().__init__()
        self.n_agents, self.embed = n_agents, embed
        self.w1 = nn.Linear(state_dim, n_agents * embed)
        self.b1 = nn.Linear(state_dim, embed)
        self.w2 = nn.Linear(state_dim, embed)
        self.v = nn.Sequential(nn.Linear(state_dim, embed), nn.ReLU(), nn.Linear(embed, 1))

    def forward(self, qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        w1 = torch.abs(self.w1(state)).view(-1, self.n_agents, self.embed)
        hidden = torch.nn.functional.elu(torch.bmm(qs.unsqueeze(1), w1).squeeze(1) + self.b1(state))
        w2 = torch.abs(self.w2(state))
        out: torch.Tensor = (hidden * w2).sum(dim=1) + self.v(state).squeeze(1)
        return out


class VDNMixer(nn.Module):
    """Value decomposition by summation."""

    def forward(self, qs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        del state
        return qs.sum(dim=1)


class RewardModel(nn.Module):
    """Predictive model of the team reward from the joint cache before and after a round."""

    def __init__(self, state_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * state_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(torch.cat([x, x_next], dim=1)).squeeze(1)
        return out


class CacheGame:
    """The environment: joint caches as an (N, B) 0/1 tensor over the requested PBs."""

    def __init__(self, instance: DelayInstance) -> None:
        self.instance = instance
        problem = instance.problem
        self.nodes = instance.nodes
        self.units = tuple(u for u in instance.unit_bytes if u in instance.slots_of_unit)
        n, b = len(self.nodes), len(self.units)
        self.sizes = torch.tensor([instance.unit_bytes[u] for u in self.units], dtype=torch.float64)
        self.capacity = torch.tensor(
            [problem.servers[x].capacity for x in self.nodes], dtype=torch.float64
        )
        col = {u: i for i, u in enumerate(self.units)}
        row = {x: i for i, x in enumerate(self.nodes)}
        demand = torch.zeros(n, b)
        neighbours = torch.zeros(n, n)
        for slot in instance.slots:
            for unit, users in slot.unit_users.items():
                for u in users:
                    for x in instance.cover[u]:
                        demand[row[x], col[unit]] += 1.0
        for u in problem.users:
            cov = [row[x] for x in instance.cover[u]]
            for i in cov:
                for j in cov:
                    if i != j:
                        neighbours[i, j] = 1.0
        self.demand = demand / max(instance.n_requests, 1)
        deg = neighbours.sum(dim=1, keepdim=True).clamp(min=1.0)
        self.neighbour_avg = neighbours / deg
        cap = self.capacity.clamp(min=1.0).unsqueeze(1)
        self.rel_size = (self.sizes.unsqueeze(0) / cap).clamp(max=2.0).float()
        self.ids = torch.eye(n)
        self.n_agents, self.n_units = n, b
        self.n_actions = b + 1
        self.obs_dim = 4 * b + 2 + n
        self.state_dim = n * b + 1
        self.max_rounds = 1
        self.empty_mean_s = self._mean_s(torch.zeros(n, b))

    def _mean_s(self, x: torch.Tensor) -> float:
        placement = {
            node: [self.units[j] for j in torch.nonzero(x[i]).flatten().tolist()]
            for i, node in enumerate(self.nodes)
        }
        return self.instance.evaluate(placement).mean_s

    def placement(self, x: torch.Tensor) -> dict[str, list[str]]:
        return {
            node: [self.units[j] for j in torch.nonzero(x[i]).flatten().tolist()]
            for i, node in enumerate(self.nodes)
        }

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """(N, B+1) valid actions: PBs not held that fit the free capacity, and stop."""
        free = self.capacity - (x.double() * self.sizes).sum(dim=1)
        fits = (self.sizes.unsqueeze(0) <= free.unsqueeze(1) + 1e-9) & (x == 0)
        return torch.cat([fits, torch.ones(self.n_agents, 1, dtype=torch.bool)], dim=1)

    def observe(self, x: torch.Tensor, round_: int) -> torch.Tensor:
        free = self.capacity - (x.double() * self.sizes).sum(dim=1)
        free_frac = (free / self.capacity.clamp(min=1.0)).float().unsqueeze(1)
        progress = torch.full((self.n_agents, 1), round_ / self.max_rounds)
        return torch.cat(
            [x, self.demand, self.neighbour_avg @ x, self.rel_size, free_frac, progress, self.ids],
            dim=1,
        )

    def state(self, x: torch.Tensor, round_: int) -> torch.Tensor:
        return torch.cat([x.flatten(), torch.tensor([round_ / self.max_rounds])])

    @staticmethod
    def apply(x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        nxt = x.clone()
        for i, a in enumerate(actions.tolist()):
            if a < x.shape[1]:
                nxt[i, a] = 1.0
        return nxt


class _Adam:
    """Adam (Kingma & Ba) on a parameter list.

    Written out because ``torch.optim`` imports ``torch._dynamo`` on first use (about 5 s of
    CPU per process), which would dominate every short training run.
    """

    def __init__(self, params: list[nn.Parameter], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.t += 1
        c1, c2 = 1 - beta1**self.t, 1 - beta2**self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(eps), value=-self.lr)


def _clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.sqrt(torch.stack([(g * g).sum() for g in grads]).sum())
    if float(total) > max_norm:
        for g in grads:
            g.mul_(max_norm / float(total))


@contextmanager
def _seeded_torch(seed: int) -> Iterator[None]:
    """Seed torch inside a forked RNG with one thread; restore the caller's state after."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def _gumbel_actions(q: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Gumbel-max sampling over masked ``q / temperature`` (argmax when temperature is 0)."""
    logits = q.masked_fill(~mask, -math.inf)
    if temperature <= 0:
        return logits.argmax(dim=1)
    u = torch.rand(q.shape).clamp(1e-12, 1 - 1e-12)
    return (logits / temperature - torch.log(-torch.log(u))).argmax(dim=1)


class _Replay:
    def __init__(self, capacity: int, rng: random.Random) -> None:
        self.items: list[tuple[torch.Tensor, ...]] = []
        self.capacity, self.rng, self.pos = capacity, rng, 0

    def add(self, item: tuple[torch.Tensor, ...]) -> None:
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            self.items[self.pos] = item
            self.pos = (self.pos + 1) % self.capacity

    def sample(self, k: int) -> list[torch.Tensor]:
        picks = [self.items[self.rng.randrange(len(self.items))] for _ in range(k)]
        return [torch.stack(col) for col in zip(*picks, strict=True)]


def _max_rounds(game: CacheGame, cap: int) -> int:
    """Most PBs any node can hold (smallest first), capped: the episode length bound."""
    best = 1
    for i in range(game.n_agents):
        left, count = float(game.capacity[i]), 0
        for s in sorted(game.sizes.tolist()):
            if s <= left:
                left -= s
                count += 1
        best = max(best, count)
    return min(best + 1, cap)


def _episode_over(
    game: CacheGame, actions: torch.Tensor, round_: int, next_mask: torch.Tensor
) -> bool:
    """Every agent stopped, the round bound is reached, or nothing fits any more."""
    return (
        bool((actions == game.n_units).all())
        or round_ + 1 >= game.max_rounds
        or bool((~next_mask[:, :-1]).all())
    )


def _transition(
    game: CacheGame, x: torch.Tensor, round_: int, actions: torch.Tensor, reward: float
) -> tuple[torch.Tensor, ...]:
    nxt = game.apply(x, actions)
    next_mask = game.mask(nxt)
    done = _episode_over(game, actions, round_, next_mask)
    return (
        game.observe(x, round_),
        game.mask(x),
        actions,
        torch.tensor(reward),
        game.observe(nxt, round_ + 1),
        next_mask,
        game.state(x, round_),
        game.state(nxt, round_ + 1),
        torch.tensor(float(done)),
        x,
        nxt,
    )


@dataclass(frozen=True, slots=True)
class RolloutJob:
    """One exploration episode for a rollout worker: the policy's parameters, its
    temperature and the episode's own seed."""

    episode: int
    temperature: float
    seed: int
    agent_state: dict[str, torch.Tensor]


def _rollout_seed(seed: int, episode: int) -> int:
    return (seed * 1_000_003 + episode) % 2**63


def _problem_token(problem: DelayProblem) -> str:
    """A content digest of the instance (a worker builds its game once per instance)."""
    doc = json.dumps(delay_problem_to_json(problem), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


def _rollout(
    problem: DelayProblem, hidden: int, max_rounds: int, token: str, job: RolloutJob
) -> list[tuple[list[int], float]]:
    """Play one episode with the frozen policy: per round the joint action and the mean
    delay after it (the environment sample). Runs in a Ray task or in the learner's process;
    the global torch RNG is forked and seeded with the episode's seed, so the caller's state
    is left alone and the episode is the same wherever it runs."""
    game = last_built("marl-game", token, lambda: _game(problem, max_rounds))
    steps: list[tuple[list[int], float]] = []
    with _seeded_torch(job.seed):
        agent = AgentNet(game.obs_dim, game.n_actions, hidden)
        agent.load_state_dict(job.agent_state)
        x = torch.zeros(game.n_agents, game.n_units)
        for round_ in range(game.max_rounds):
            mask = game.mask(x)
            with torch.no_grad():
                acts = _gumbel_actions(agent(game.observe(x, round_)), mask, job.temperature)
            nxt = game.apply(x, acts)
            steps.append((acts.tolist(), game._mean_s(nxt)))
            if _episode_over(game, acts, round_, game.mask(nxt)):
                break
            x = nxt
    return steps


def _game(problem: DelayProblem, max_rounds: int) -> CacheGame:
    game = CacheGame(DelayInstance(problem))
    game.max_rounds = max_rounds
    return game


def train(
    problem: DelayProblem,
    *,
    seed: int = 0,
    config: MarlConfig | None = None,
    engine: str = "local",
    address: str | None = None,
    variants: Sequence[DelayProblem] = (),
) -> Trained:
    """Train the team on one instance (see the module docstring).

    ``variants``: more instances with the same layout (the same requested PBs and nodes) but
    other demand; episodes cycle through ``problem`` and them (step by step only), so the
    agents learn to act on the demand they observe rather than on one fixed demand (what an
    edge running its agent locally needs, :mod:`edge_node.agent`). Greedy evaluations and
    the returned placement are on ``problem``.

    With ``config.parallel_envs = n > 0`` the episodes are rolled out in batches of n by the
    policy as it is at the batch's start, on ``engine`` (``local``: in this process; ``ray``:
    one Ray task per episode, on a local Ray or the cluster at ``address``;
    :func:`controller.sweep.engine_session`); the learner then replays the batch's
    transitions in episode order. Each episode has its own seed, so both engines train
    bit-identical networks.

    Example:
        >>> from controller.delay.scenario import tiny_problem
        >>> t = train(tiny_problem(seed=0), seed=1, config=MarlConfig(episodes=4))
        >>> t.env_samples > 0, len(t.curve) >= 1
        (True, True)
    """
    cfg = config or MarlConfig()
    check_engine(engine, address)
    if engine != "local" and cfg.parallel_envs == 0:
        raise ValueError("--parallel-envs: must be >= 1 with --engine ray")
    if variants and cfg.parallel_envs:
        raise ValueError("marl: variants are trained step by step (parallel_envs=0)")
    instance = DelayInstance(problem)
    game = CacheGame(instance)
    game.max_rounds = _max_rounds(game, cfg.max_rounds)
    games = [game]
    for variant in variants:
        other = CacheGame(DelayInstance(variant))
        if other.units != game.units or other.nodes != game.nodes:
            raise ValueError("marl: a variant requests other PBs or has other nodes")
        other.max_rounds = game.max_rounds
        games.append(other)
    rng = random.Random(seed)
    with _seeded_torch(seed):
        agent = AgentNet(game.obs_dim, game.n_actions, cfg.hidden)
        mixer: nn.Module = (
            QMixer(game.n_agents, game.state_dim, cfg.mixing_embed)
            if cfg.mixer == "qmix"
            else VDNMixer()
        )
        target_agent = AgentNet(game.obs_dim, game.n_actions, cfg.hidden)
        target_mixer: nn.Module = (
            QMixer(game.n_agents, game.state_dim, cfg.mixing_embed)
            if cfg.mixer == "qmix"
            else VDNMixer()
        )
        target_agent.load_state_dict(agent.state_dict())
        target_mixer.load_state_dict(mixer.state_dict())
        params = list(agent.parameters()) + list(mixer.parameters())
        opt = _Adam(params, cfg.lr)
        model = RewardModel(game.state_dim - 1, cfg.hidden)
        model_opt = _Adam(list(model.parameters()), cfg.lr)
        real, synth = _Replay(cfg.buffer, rng), _Replay(cfg.buffer, rng)
        trained = Trained(cfg, game.units, game.nodes, agent, mixer)
        best_return = -math.inf
        updates = 0

        def td_update(batch: list[torch.Tensor]) -> None:
            nonlocal updates
            obs, mask, act, rew, nobs, nmask, st, nst, done = batch[:9]
            b = obs.shape[0]
            q = agent(obs.view(b * game.n_agents, -1)).view(b, game.n_agents, -1)
            q_taken = q.gather(2, act.unsqueeze(2)).squeeze(2)
            with torch.no_grad():
                nq_online = agent(nobs.view(b * game.n_agents, -1)).view(b, game.n_agents, -1)
                nq_online = nq_online.masked_fill(~nmask, -math.inf)
                best = nq_online.argmax(dim=2, keepdim=True)
                nq = target_agent(nobs.view(b * game.n_agents, -1)).view(b, game.n_agents, -1)
                target = rew + cfg.discount * (1 - done) * target_mixer(
                    nq.gather(2, best).squeeze(2), nst
                )
            loss = torch.nn.functional.mse_loss(mixer(q_taken, st), target.float())
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            _clip_grad_norm(params, 10.0)
            opt.step()
            updates += 1
            if updates % cfg.target_every == 0:
                target_agent.load_state_dict(agent.state_dict())
                target_mixer.load_state_dict(mixer.state_dict())

        def synthesise(k: int) -> None:
            """Synthetic transitions from real states, rewards from the reward model."""
            picks = real.sample(k)
            xs = picks[9]
            for j in range(k):
                x = xs[j]
                round_ = int(round(float(picks[6][j][-1]) * game.max_rounds))
                mask = game.mask(x)
                with torch.no_grad():
                    q = agent(game.observe(x, round_))
                acts = _gumbel_actions(q, mask, max(cfg.temperature_start, 0.1))
                nxt = game.apply(x, acts)
                with torch.no_grad():
                    r = float(model(x.flatten().unsqueeze(0), nxt.flatten().unsqueeze(0))[0])
                synth.add(_transition(game, x, round_, acts, r))

        def greedy_rollout() -> tuple[float, torch.Tensor]:
            x = torch.zeros(game.n_agents, game.n_units)
            for round_ in range(game.max_rounds):
                mask = game.mask(x)
                with torch.no_grad():
                    acts = _gumbel_actions(agent(game.observe(x, round_)), mask, 0.0)
                if bool((acts == game.n_units).all()):
                    break
                x = game.apply(x, acts)
            return game._mean_s(x), x

        def learn(item: tuple[torch.Tensor, ...]) -> None:
            """One real transition: store it, fit the reward model, make the TD updates."""
            real.add(item)
            if cfg.augment:
                batch = real.sample(min(len(real.items), cfg.batch))
                pred = model(batch[9].flatten(1), batch[10].flatten(1))
                mloss = torch.nn.functional.mse_loss(pred, batch[3].float())
                model_opt.zero_grad()
                mloss.backward()  # type: ignore[no-untyped-call]
                model_opt.step()
                if len(real.items) >= cfg.model_warmup:
                    synthesise(cfg.synthetic_per_real)
            for _ in range(cfg.updates_per_step):
                if len(real.items) < 8:
                    break
                if cfg.augment and len(synth.items) >= cfg.batch // 2:
                    half = cfg.batch // 2
                    a, b2 = real.sample(half), synth.sample(half)
                    td_update([torch.cat([p, s]) for p, s in zip(a, b2, strict=True)])
                else:
                    td_update(real.sample(min(len(real.items), cfg.batch)))

        def temperature(episode: int) -> float:
            frac = episode / max(cfg.episodes - 1, 1)
            return float(
                cfg.temperature_start * (cfg.temperature_end / cfg.temperature_start) ** frac
            )

        def evaluate(episode: int) -> None:
            nonlocal best_return
            mean_s, xg = greedy_rollout()
            ret = (game.empty_mean_s - mean_s) / game.empty_mean_s
            trained.curve.append(LearningPoint(trained.env_samples, episode + 1, ret, mean_s))
            if ret > best_return:
                best_return = ret
                trained.best_placement = game.placement(xg)

        def is_eval_point(episode: int) -> bool:
            return episode % cfg.eval_every == cfg.eval_every - 1 or episode == cfg.episodes - 1

        if cfg.parallel_envs == 0:
            for episode in range(cfg.episodes):
                game = games[episode % len(games)]
                temp = temperature(episode)
                x = torch.zeros(game.n_agents, game.n_units)
                prev = game.empty_mean_s
                for round_ in range(game.max_rounds):
                    mask = game.mask(x)
                    with torch.no_grad():
                        acts = _gumbel_actions(agent(game.observe(x, round_)), mask, temp)
                    nxt = game.apply(x, acts)
                    mean = game._mean_s(nxt)
                    trained.env_samples += 1
                    reward = cfg.reward_scale * (prev - mean) / game.empty_mean_s
                    item = _transition(game, x, round_, acts, reward)
                    learn(item)
                    prev, x = mean, nxt
                    if bool(item[8]):
                        break
                if is_eval_point(episode):
                    game = games[0]
                    evaluate(episode)
            return trained
        # Batches of parallel_envs episodes rolled out by one frozen policy on the engine,
        # then learned from in episode order: the same result wherever the rollouts ran.
        work = functools.partial(
            _rollout, problem, cfg.hidden, game.max_rounds, _problem_token(problem)
        )
        with engine_session(engine, address) as run:
            for first in range(0, cfg.episodes, cfg.parallel_envs):
                episodes = range(first, min(first + cfg.parallel_envs, cfg.episodes))
                state = {k: v.detach().clone() for k, v in agent.state_dict().items()}
                jobs = [
                    RolloutJob(e, temperature(e), _rollout_seed(seed, e), state) for e in episodes
                ]
                for steps in run(work, jobs):
                    x = torch.zeros(game.n_agents, game.n_units)
                    prev = game.empty_mean_s
                    for round_, (actions, mean) in enumerate(steps):
                        acts = torch.tensor(actions, dtype=torch.int64)
                        trained.env_samples += 1
                        reward = cfg.reward_scale * (prev - mean) / game.empty_mean_s
                        learn(_transition(game, x, round_, acts, reward))
                        prev, x = mean, game.apply(x, acts)
                if any(is_eval_point(e) for e in episodes):
                    evaluate(episodes[-1])
    return trained


def solve(
    problem: DelayProblem,
    *,
    seed: int | None = None,
    time_limit_s: float | None = None,
    config: MarlConfig | None = None,
    engine: str = "local",
    address: str | None = None,
) -> DelayResult:
    """``marl``: train on the instance, return the best greedy rollout's placement
    (``engine``/``address``: where the rollouts run, see :func:`train`).

    Example:
        >>> from controller.delay.scenario import tiny_problem
        >>> r = solve(tiny_problem(seed=0), seed=0, config=MarlConfig(episodes=5))
        >>> r.solver, r.granularity, r.delivery
        ('marl', 'block', 'broadcast')
    """
    del time_limit_s
    start = time.perf_counter()
    cfg = config or MarlConfig()
    trained = train(
        problem, seed=0 if seed is None else seed, config=cfg, engine=engine, address=address
    )
    last = trained.curve[-1]
    return make_delay_result(
        DelayInstance(problem),
        trained.best_placement,
        solver="marl",
        delivery="broadcast",
        solve_seconds=time.perf_counter() - start,
        info={
            "env_samples": trained.env_samples,
            "episodes": cfg.episodes,
            "augment": cfg.augment,
            "parallel_envs": cfg.parallel_envs,
            "final_greedy_return": last.greedy_return,
        },
    )


def save_checkpoint(trained: Trained, path: Path) -> None:
    """Write the networks, config and layout to ``path`` (atomic: tmp file + replace)."""
    doc: dict[str, Any] = {
        "schema": "trimcache.marl-checkpoint/v1",
        "config": asdict(trained.config),
        "units": list(trained.units),
        "nodes": list(trained.nodes),
        "agent": trained.agent.state_dict(),
        "mixer": trained.mixer.state_dict(),
        "env_samples": trained.env_samples,
        "best_placement": trained.best_placement,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(doc, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, problem: DelayProblem) -> Trained:
    """Rebuild a :class:`Trained` saved by :func:`save_checkpoint` for ``problem``.

    Raises:
        ValueError: not a checkpoint, or made for an instance with another layout.
    """
    doc: Mapping[str, Any] = torch.load(path, weights_only=True)
    if not isinstance(doc, Mapping) or doc.get("schema") != "trimcache.marl-checkpoint/v1":
        raise ValueError(f"{path}: not a marl checkpoint")
    cfg = MarlConfig(**doc["config"])
    game = CacheGame(DelayInstance(problem))
    if list(game.units) != doc["units"] or list(game.nodes) != doc["nodes"]:
        raise ValueError(f"{path}: checkpoint was trained for another instance layout")
    agent = AgentNet(game.obs_dim, game.n_actions, cfg.hidden)
    mixer: nn.Module = (
        QMixer(game.n_agents, game.state_dim, cfg.mixing_embed)
        if cfg.mixer == "qmix"
        else VDNMixer()
    )
    agent.load_state_dict(doc["agent"])
    mixer.load_state_dict(doc["mixer"])
    return Trained(
        cfg,
        game.units,
        game.nodes,
        agent,
        mixer,
        best_placement={k: list(v) for k, v in doc["best_placement"].items()},
        env_samples=int(doc["env_samples"]),
    )


def greedy_placement(trained: Trained, problem: DelayProblem) -> dict[str, list[str]]:
    """Decentralised execution: every agent acts greedily on its local observation."""
    game = CacheGame(DelayInstance(problem))
    game.max_rounds = _max_rounds(game, trained.config.max_rounds)
    x = torch.zeros(game.n_agents, game.n_units)
    for round_ in range(game.max_rounds):
        with torch.no_grad():
            acts = _gumbel_actions(trained.agent(game.observe(x, round_)), game.mask(x), 0.0)
        if bool((acts == game.n_units).all()):
            break
        x = game.apply(x, acts)
    return game.placement(x)
