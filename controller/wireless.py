"""Wireless edge network model: who can get which model in time (the ``reachable`` sets).

Edge servers and users sit on a square plane. Downlink from server ``s`` to user ``u`` at
distance ``d``:

- path loss ``PL(d) = 128.1 + 37.6 * log10(d / 1 km)`` dB (3GPP urban macro, d >= 1 m);
- received SNR ``= P_tx - PL(d) - (N0 + 10 log10 B)`` with ``N0 = -174`` dBm/Hz;
- Shannon rate ``R = B * log2(1 + SNR)`` bit/s, each user being given ``B`` Hz.

A server covers the users within ``coverage_m``. A user is *associated* with its nearest
covering server. Delivering model ``m`` (``S_m`` bytes) from server ``s`` to user ``u`` takes

- ``8 S_m / R(u, s)`` when ``s`` covers ``u`` (direct), or
- ``8 S_m / R_backhaul + 8 S_m / R(u, a)`` when ``s`` is a *neighbour* (within
  ``neighbour_m``) of ``u``'s associated server ``a``, which relays over the backhaul,

and ``s`` is in ``reachable(u, m)`` when that time is within ``m``'s deadline. Requests follow
a Zipf law with a per-user ranking: user ``u`` ranks the models by its own random permutation
and requests rank ``r`` with probability proportional to ``r ** -exponent``.

All randomness comes from a local ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.library import ModelLibrary
from controller.placement.arrays import ArrayForm
from controller.placement.problem import PlacementProblem

FloatArray = npt.NDArray[np.float64]

NOISE_DBM_PER_HZ = -174.0


@dataclass(frozen=True, slots=True)
class RadioConfig:
    """Channel and network parameters (units in the names)."""

    tx_power_dbm: float = 30.0
    bandwidth_hz: float = 100e6
    noise_dbm_per_hz: float = NOISE_DBM_PER_HZ
    coverage_m: float = 300.0
    neighbour_m: float = 450.0
    backhaul_bps: float = 10e9
    min_distance_m: float = 1.0


@dataclass(frozen=True, slots=True)
class RadioGeometry:
    """Where the radio model's servers and users stand, in metres, in id order (the wireless
    model's input; :class:`controller.topology.Topology` is the controller's user-area view)."""

    server_ids: tuple[str, ...]
    server_xy_m: FloatArray  # (S, 2)
    user_ids: tuple[str, ...]
    user_xy_m: FloatArray  # (U, 2)


def path_loss_db(distance_m: FloatArray | float) -> FloatArray:
    """``128.1 + 37.6 log10(d km)`` in dB.

    Example:
        >>> round(float(path_loss_db(1000.0)), 1)
        128.1
    """
    d_km = np.asarray(distance_m, dtype=np.float64) / 1000.0
    return np.asarray(128.1 + 37.6 * np.log10(d_km), dtype=np.float64)


def rate_bps(distance_m: FloatArray | float, radio: RadioConfig | None = None) -> FloatArray:
    """Shannon downlink rate at a distance.

    Example:
        >>> round(float(rate_bps(200.0)) / 1e6)   # 30 dBm, 100 MHz
        738
    """
    radio = radio or RadioConfig()
    d = np.maximum(np.asarray(distance_m, dtype=np.float64), radio.min_distance_m)
    noise_dbm = radio.noise_dbm_per_hz + 10.0 * np.log10(radio.bandwidth_hz)
    snr_db = radio.tx_power_dbm - path_loss_db(d) - noise_dbm
    return np.asarray(radio.bandwidth_hz * np.log2(1.0 + 10.0 ** (snr_db / 10.0)))


def random_topology(
    n_servers: int, n_users: int, *, area_m: float = 1000.0, seed: int = 0
) -> RadioGeometry:
    """Servers on a jittered grid, users uniform on an ``area_m`` square.

    Example:
        >>> t = random_topology(4, 3, seed=1)
        >>> t.server_xy_m.shape, t.user_ids
        ((4, 2), ('u0', 'u1', 'u2'))
    """
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_servers)))
    cell = area_m / side
    cells = np.array([(i % side, i // side) for i in range(n_servers)], dtype=np.float64)
    jitter = rng.uniform(0.3, 0.7, size=(n_servers, 2))
    servers = (cells + jitter) * cell
    users = rng.uniform(0.0, area_m, size=(n_users, 2))
    return RadioGeometry(
        server_ids=tuple(f"s{i}" for i in range(n_servers)),
        server_xy_m=servers.reshape(n_servers, 2),
        user_ids=tuple(f"u{i}" for i in range(n_users)),
        user_xy_m=users.reshape(n_users, 2),
    )


def seconds_per_byte(topology: RadioGeometry, radio: RadioConfig | None = None) -> FloatArray:
    """(U, S) delivery time per byte from each server to each user (``inf`` if out of reach).

    Direct when the server covers the user, else relayed by the user's associated server if
    the server is its neighbour; the faster of the two when both apply.
    """
    radio = radio or RadioConfig()
    users, servers = topology.user_xy_m, topology.server_xy_m
    dist = np.linalg.norm(users[:, None, :] - servers[None, :, :], axis=2)  # (U, S)
    direct = np.where(dist <= radio.coverage_m, 8.0 / rate_bps(dist, radio), np.inf)
    out = direct.copy()
    if servers.shape[0] == 0 or users.shape[0] == 0:
        return out
    assoc = np.argmin(dist, axis=1)
    has_assoc = dist[np.arange(len(users)), assoc] <= radio.coverage_m
    server_gap = np.linalg.norm(servers[:, None, :] - servers[None, :, :], axis=2)  # (S, S)
    relay_hop = 8.0 / radio.backhaul_bps + direct[np.arange(len(users)), assoc]  # (U,)
    neighbour = server_gap[assoc] <= radio.neighbour_m  # (U, S)
    relayed = np.where(neighbour & has_assoc[:, None], relay_hop[:, None], np.inf)
    return np.minimum(out, relayed)


def delivery_budget(model_bytes: Mapping[str, int], deadlines_s: Mapping[str, float]) -> FloatArray:
    """(M,) seconds per byte each model's deadline allows: a model reaches (u, s) when
    ``seconds_per_byte[u, s] <= budget[m]`` (delivery time is linear in the bytes).

    Raises:
        ValueError: a model without a deadline, or a non-positive deadline.
    """
    model_ids = list(model_bytes)
    for m in model_ids:
        if m not in deadlines_s:
            raise ValueError(f"model {m!r}: no deadline")
        if not deadlines_s[m] > 0:
            raise ValueError(f"model {m!r}: deadline must be > 0, got {deadlines_s[m]}")
    return np.array([deadlines_s[m] for m in model_ids], dtype=np.float64) / np.array(
        [max(model_bytes[m], 1) for m in model_ids], dtype=np.float64
    )


def reachable_sets(
    topology: RadioGeometry,
    model_bytes: Mapping[str, int],
    deadlines_s: Mapping[str, float],
    radio: RadioConfig | None = None,
) -> dict[str, dict[str, list[str]]]:
    """user -> server -> models it can deliver within their deadlines (nearest servers first).

    Raises:
        ValueError: a model without a deadline, or a non-positive deadline.
    """
    model_ids = list(model_bytes)
    spb = seconds_per_byte(topology, radio)  # (U, S)
    budget = delivery_budget(model_bytes, deadlines_s)
    out: dict[str, dict[str, list[str]]] = {}
    for u, user_id in enumerate(topology.user_ids):
        row: dict[str, list[str]] = {}
        for s in np.argsort(spb[u], kind="stable").tolist():
            if not np.isfinite(spb[u, s]):
                break
            ok = np.flatnonzero(spb[u, s] <= budget)
            if len(ok):
                row[topology.server_ids[s]] = [model_ids[i] for i in ok.tolist()]
        out[user_id] = row
    return out


def zipf_requests(
    user_ids: Sequence[str], model_ids: Sequence[str], *, exponent: float, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Zipf request probabilities with a random per-user ranking (rows sum to 1).

    Example:
        >>> r = zipf_requests(["u0"], ["a", "b"], exponent=1.0, seed=0)
        >>> sorted(round(p, 3) for p in r["u0"].values())
        [0.333, 0.667]
    """
    prob = zipf_matrix(len(user_ids), len(model_ids), exponent=exponent, seed=seed)
    return {
        user_id: dict(zip(model_ids, row, strict=True))
        for user_id, row in zip(user_ids, prob.tolist(), strict=True)
    }


def zipf_matrix(n_users: int, n_models: int, *, exponent: float, seed: int = 0) -> FloatArray:
    """The (U, M) matrix of :func:`zipf_requests` (same draws, so the same numbers).

    Example:
        >>> zipf_matrix(1, 2, exponent=1.0, seed=0).round(3).tolist()
        [[0.667, 0.333]]
    """
    if exponent < 0:
        raise ValueError(f"Zipf exponent must be >= 0, got {exponent}")
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_models + 1, dtype=np.float64) ** exponent
    weights /= weights.sum()
    prob = np.empty((n_users, n_models), dtype=np.float64)
    for u in range(n_users):
        prob[u, rng.permutation(n_models)] = weights  # user u's rank r -> weights[r]
    return prob


def uniform_deadlines(
    model_ids: Sequence[str], *, low_s: float, high_s: float, seed: int = 0
) -> dict[str, float]:
    """Per-model deadlines drawn uniformly from ``[low_s, high_s]``."""
    rng = np.random.default_rng(seed)
    return {
        m: float(d)
        for m, d in zip(model_ids, rng.uniform(low_s, high_s, len(model_ids)), strict=True)
    }


def build_problem(
    library: ModelLibrary,
    topology: RadioGeometry,
    *,
    capacity_bytes: int | Mapping[str, int],
    zipf_exponent: float = 0.8,
    deadlines_s: Mapping[str, float] | None = None,
    deadline_range_s: tuple[float, float] = (2.0, 10.0),
    radio: RadioConfig | None = None,
    seed: int = 0,
    arrays: bool = False,
) -> PlacementProblem:
    """A placement problem from a library, a topology and the channel model.

    Args:
        library: blocks and models.
        topology: server and user positions.
        capacity_bytes: one capacity for every server, or server id -> capacity.
        zipf_exponent: Zipf exponent of the per-user popularity.
        deadlines_s: per-model deadlines; default drawn from ``deadline_range_s``.
        deadline_range_s: range of the drawn deadlines.
        radio: channel parameters.
        seed: seed of the popularity and deadline draws.
        arrays: keep requests and reachability as arrays
            (:meth:`~controller.placement.problem.PlacementProblem.from_arrays`): the same
            problem, built in seconds and bounded memory at 10k models x 5k users.

    Example:
        >>> from controller.library import architecture_library
        >>> lib = architecture_library(2, archs=("resnet18",))
        >>> p = build_problem(lib, random_topology(2, 3, seed=0), capacity_bytes=10**8)
        >>> len(p.models), len(p.servers), len(p.requests)
        (2, 2, 3)
    """
    model_ids = list(library.models)
    if deadlines_s is None:
        deadlines_s = uniform_deadlines(
            model_ids, low_s=deadline_range_s[0], high_s=deadline_range_s[1], seed=seed + 1
        )
    sizes = {m: library.model_bytes(m) for m in model_ids}
    if isinstance(capacity_bytes, Mapping):
        servers = {s: int(capacity_bytes[s]) for s in topology.server_ids}
    else:
        servers = dict.fromkeys(topology.server_ids, int(capacity_bytes))
    if arrays:
        form = ArrayForm(
            user_ids=topology.user_ids,
            prob=zipf_matrix(
                len(topology.user_ids), len(model_ids), exponent=zipf_exponent, seed=seed
            ),
            seconds_per_byte=seconds_per_byte(topology, radio),
            budget=delivery_budget(sizes, deadlines_s),
        )
        return PlacementProblem.from_arrays(
            blocks=library.blocks, models=library.models, servers=servers, arrays=form
        )
    return PlacementProblem(
        blocks=library.blocks,
        models=library.models,
        servers=servers,
        requests=zipf_requests(topology.user_ids, model_ids, exponent=zipf_exponent, seed=seed),
        reachable=reachable_sets(topology, sizes, deadlines_s, radio),
    )
