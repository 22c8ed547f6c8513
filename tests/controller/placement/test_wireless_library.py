"""The channel model, popularity, model libraries and the simulator's scenario builder."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller import library, sim, wireless


@pytest.mark.parametrize(
    ("arch", "params"),
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("vit-b16", 86_567_656),
        ("bert-base", 109_482_240),
        ("llama-7b", 6_738_415_616),
    ],
)
def test_parameter_counts_match_published_models(arch, params):
    assert sum(n for _, n in library.layer_params(arch)) == params


def test_fine_tuned_family_shares_frozen_prefix():
    lib = library.fine_tuned_family("bert-base", [0, 6, 13])
    full = sum(n for _, n in library.layer_params("bert-base")) * 4
    assert all(lib.model_bytes(m) == full for m in lib.models)
    shared = set(lib.shared_blocks())
    assert shared == {"bert-base/embed", *(f"bert-base/layer{i}" for i in range(5))}
    grouped = library.group_by_sharing(lib)
    assert grouped.unique_bytes() == lib.unique_bytes()
    assert len(grouped.shared_blocks()) == 1  # embed + layers 0-4, used by t1 and t2
    # Depths 6, 9, 13: the first 6 layers have 3 users, the next 3 have 2: two shared PBs.
    nested = library.group_by_sharing(library.fine_tuned_family("bert-base", [6, 9, 13]))
    assert len(nested.shared_blocks()) == 2


def test_lora_family_and_manifests():
    lib = library.lora_family([8, 16])
    assert len(lib.shared_blocks()) == 34  # embed, 32 decoders, head
    grouped = library.group_by_sharing(lib)
    assert len(grouped.shared_blocks()) == 1
    assert grouped.total_bytes() > 2 * 13_000_000_000 > grouped.unique_bytes()
    manifest_lib = library.library_from_manifests({"a": 5, "b": 1}, {"x": ["a", "b"], "y": ["a"]})
    assert sorted(manifest_lib.blocks.values()) == [1, 5]
    with pytest.raises(ValueError, match="empty model library"):
        library.library_from_manifests({}, {})
    with pytest.raises(ValueError, match="unknown block 'c'"):
        library.library_from_manifests({"a": 1}, {"x": ["c"]})
    with pytest.raises(ValueError, match="negative size"):
        library.library_from_manifests({"a": -1}, {"x": ["a"]})


def test_sharing_degree_controls_dedup():
    none = library.architecture_library(4, sharing=0.0)
    full = library.architecture_library(4, sharing=1.0)
    assert none.unique_bytes() == none.total_bytes()
    assert full.unique_bytes() < 0.35 * full.total_bytes()


def test_channel_model():
    assert float(wireless.path_loss_db(1000.0)) == pytest.approx(128.1)
    assert float(wireless.path_loss_db(100.0)) == pytest.approx(128.1 - 37.6)
    rates = wireless.rate_bps(np.array([50.0, 100.0, 200.0]))
    assert np.all(np.diff(rates) < 0)
    radio = wireless.RadioConfig(bandwidth_hz=1e6, tx_power_dbm=20.0)
    snr_db = 20.0 - (128.1 + 37.6 * math.log10(0.1)) - (-174.0 + 60.0)
    assert float(wireless.rate_bps(100.0, radio)) == pytest.approx(
        1e6 * math.log2(1 + 10 ** (snr_db / 10))
    )


def test_reachable_direct_relay_and_deadlines():
    topo = wireless.RadioGeometry(
        server_ids=("near", "neighbour", "far"),
        server_xy_m=np.array([[0.0, 0.0], [400.0, 0.0], [5000.0, 0.0]]),
        user_ids=("u",),
        user_xy_m=np.array([[10.0, 0.0]]),
    )
    radio = wireless.RadioConfig(coverage_m=300.0, neighbour_m=450.0, backhaul_bps=1e9)
    spb = wireless.seconds_per_byte(topo, radio)
    direct = 8.0 / float(wireless.rate_bps(10.0, radio))
    assert spb[0, 0] == pytest.approx(direct)
    assert spb[0, 1] == pytest.approx(direct + 8.0 / 1e9)  # relayed by "near"
    assert spb[0, 2] == math.inf
    sizes = {"small": 10**6, "huge": 10**12}
    reach = wireless.reachable_sets(topo, sizes, {"small": 1.0, "huge": 1.0}, radio)
    assert reach == {"u": {"near": ["small"], "neighbour": ["small"]}}
    with pytest.raises(ValueError, match="model 'small': no deadline"):
        wireless.reachable_sets(topo, sizes, {"huge": 1.0}, radio)


def test_zipf_rows():
    req = wireless.zipf_requests(["a", "b"], [f"m{i}" for i in range(10)], exponent=1.0, seed=3)
    for row in req.values():
        assert sum(row.values()) == pytest.approx(1.0)
        top = sorted(row.values(), reverse=True)
        assert top[0] / top[1] == pytest.approx(2.0)
    assert req["a"] != req["b"]  # per-user rankings
    assert req == wireless.zipf_requests(
        ["a", "b"], [f"m{i}" for i in range(10)], exponent=1.0, seed=3
    )


def test_scenario_problem_is_deterministic():
    scenario = sim.Scenario(n_servers=3, n_users=5, models_per_family=1)
    assert sim.make_problem(scenario, seed=1) == sim.make_problem(scenario, seed=1)
    assert sim.make_problem(scenario, seed=1) != sim.make_problem(scenario, seed=2)
