"""evaluate_delay against hand-computed tiny cases (docs/delay-model.md, the reference rules).

The expected values are computed here from the written formulas, independently of the model's
code: gamma from the path loss, rates from Shannon, then the schedule by hand.
"""

from __future__ import annotations

import math

import pytest

from controller.delay import evaluate_delay
from controller.delay.model import percentile_nearest_rank
from controller.delay.problem import Channel, DelayProblem

W = 20e6
MB = 1_000_000
BACKHAUL = 12.5e6
MIGRATION = 125e6


def gamma(d_m: float) -> float:
    """P g / (N0 W) at 30 dBm, -174 dBm/Hz, 20 MHz."""
    pl = 128.1 + 37.6 * math.log10(max(d_m, 1.0) / 1000)
    return 10 ** ((30 - pl - (-174 + 10 * math.log10(W))) / 10)


def airtime(size: int, snr: float) -> float:
    return 8 * size / (W * math.log2(1 + snr))


def problem(blocks, models, servers, users, slots, **kw) -> DelayProblem:
    return DelayProblem(
        blocks=blocks,
        models=models,
        servers={n: {"capacity": 10**9, "position": pos} for n, pos in servers.items()},
        users=users,
        channel=Channel(),
        backhaul_bytes_per_s=BACKHAUL,
        migration_bytes_per_s=MIGRATION,
        slots=slots,
        **kw,
    )


def test_one_user_broadcast_gains_nothing_over_unicast():
    p = problem(
        {"a": 10 * MB, "b": 4 * MB},
        {"m": ["a", "b"]},
        {"s0": [0, 0]},
        {"u0": [30, 40]},
        [{"u0": "m"}],
    )
    place = {"s0": ["a", "b"]}
    bc = evaluate_delay(p, place)
    uc = evaluate_delay(p, place, delivery="unicast")
    expected = airtime(10 * MB, gamma(50)) + airtime(4 * MB, gamma(50))
    assert bc.mean_s == pytest.approx(expected, rel=1e-12)
    assert uc.mean_s == pytest.approx(expected, rel=1e-12)
    assert bc.request_delays_s == pytest.approx(uc.request_delays_s, rel=1e-12)


def test_two_users_sharing_a_pb_receive_it_once():
    # u0 at 50 m, u1 at 100 m from s0; both request m (one PB). Broadcast: one job at the
    # weaker user's SNR. Unicast: two jobs, the shorter first.
    p = problem(
        {"a": 20 * MB},
        {"m": ["a"]},
        {"s0": [0, 0]},
        {"u0": [30, 40], "u1": [60, 80]},
        [{"u0": "m", "u1": "m"}],
    )
    bc = evaluate_delay(p, {"s0": ["a"]})
    once = airtime(20 * MB, gamma(100))
    assert bc.request_delays_s == pytest.approx((once, once), rel=1e-12)
    uc = evaluate_delay(p, {"s0": ["a"]}, delivery="unicast")
    near, far = airtime(20 * MB, gamma(50)), airtime(20 * MB, gamma(100))
    assert uc.request_delays_s == pytest.approx((near, near + far), rel=1e-12)
    assert bc.makespan_s < uc.makespan_s


def test_a_block_on_a_neighbour_costs_exactly_its_migration_time():
    # s1 is 1 km away: it does not cover u0, so s1's copy is migrated to u0's home s0.
    p = problem(
        {"a": 25 * MB},
        {"m": ["a"]},
        {"s0": [0, 0], "s1": [1000, 0]},
        {"u0": [30, 40]},
        [{"u0": "m"}],
    )
    local = evaluate_delay(p, {"s0": ["a"]}).mean_s
    neighbour = evaluate_delay(p, {"s1": ["a"]}).mean_s
    cloud = evaluate_delay(p, {}).mean_s
    assert local == pytest.approx(airtime(25 * MB, gamma(50)), rel=1e-12)
    assert neighbour - local == pytest.approx(25 * MB / MIGRATION, rel=1e-9)
    assert cloud - local == pytest.approx(25 * MB / BACKHAUL, rel=1e-9)


def test_joint_transmission_adds_amplitudes():
    # u0 is 50 m from s0 and 200 m from s1: both hold the PB, both cover u0.
    p = problem(
        {"a": 5 * MB},
        {"m": ["a"]},
        {"s0": [0, 0], "s1": [30, 240]},
        {"u0": [30, 40]},
        [{"u0": "m"}],
    )
    joint = (math.sqrt(gamma(50)) + math.sqrt(gamma(200))) ** 2
    both = evaluate_delay(p, {"s0": ["a"], "s1": ["a"]}).mean_s
    assert both == pytest.approx(airtime(5 * MB, joint), rel=1e-12)
    assert both < evaluate_delay(p, {"s0": ["a"]}).mean_s


def test_schedule_order_group_size_per_airtime_then_id():
    # Same size and same SNR: ties by id, "a" before "b" whatever the request order.
    users = {"u0": [30, 40], "u1": [40, 30], "u2": [0, 50]}
    p = problem(
        {"b": 8 * MB, "a": 8 * MB},
        {"mb": ["b"], "ma": ["a"]},
        {"s0": [0, 0]},
        users,
        [{"u0": "mb", "u1": "ma"}],
    )
    t = airtime(8 * MB, gamma(50))
    assert evaluate_delay(p, {"s0": ["a", "b"]}).request_delays_s == pytest.approx(
        (2 * t, t), rel=1e-12
    )
    # A PB two users need goes first although its id sorts last (|G|/tau is larger).
    p2 = problem(
        {"z": 8 * MB, "a": 8 * MB},
        {"mz": ["z"], "ma": ["a"]},
        {"s0": [0, 0]},
        users,
        [{"u0": "ma", "u1": "mz", "u2": "mz"}],
    )
    assert evaluate_delay(p2, {"s0": ["a", "z"]}).request_delays_s == pytest.approx(
        (2 * t, t, t), rel=1e-12
    )


def test_a_job_starts_when_its_block_has_arrived():
    # "a" (local, 1 MB) is sent first; "b" (5 MB from the cloud, 0.4 s) waits for its fetch.
    p = problem(
        {"a": MB, "b": 5 * MB}, {"m": ["a", "b"]}, {"s0": [0, 0]}, {"u0": [30, 40]}, [{"u0": "m"}]
    )
    ta, tb = airtime(MB, gamma(50)), airtime(5 * MB, gamma(50))
    assert ta < 5 * MB / BACKHAUL
    assert evaluate_delay(p, {"s0": ["a"]}).mean_s == pytest.approx(
        5 * MB / BACKHAUL + tb, rel=1e-12
    )


def test_mean_p95_makespan_definitions():
    p = problem(
        {"a": 8 * MB, "c": 16 * MB},
        {"ma": ["a"], "mc": ["c"]},
        {"s0": [0, 0]},
        {"u0": [30, 40], "u1": [40, 30]},
        [{"u0": "ma"}, {"u0": "ma", "u1": "mc"}],
    )
    s = evaluate_delay(p, {"s0": ["a", "c"]})
    ta, tc = airtime(8 * MB, gamma(50)), airtime(16 * MB, gamma(50))
    assert s.request_delays_s == pytest.approx((ta, ta, ta + tc), rel=1e-12)
    assert s.mean_s == pytest.approx((3 * ta + tc) / 3, rel=1e-12)
    assert s.p95_s == pytest.approx(ta + tc, rel=1e-12)
    assert s.makespan_s == pytest.approx((ta + ta + tc) / 2, rel=1e-12)
    assert s.deadline_hit_ratio is None


def test_percentile_is_nearest_rank():
    values = [float(i) for i in range(1, 21)]
    assert percentile_nearest_rank(values, 0.95) == 19.0
    assert percentile_nearest_rank([5.0], 0.95) == 5.0


def test_coarse_granularity_sends_each_model_whole():
    # Two models share "base"; at model granularity they are two opaque units.
    p = problem(
        {"base": 10 * MB, "h0": MB, "h1": MB},
        {"m0": ["base", "h0"], "m1": ["base", "h1"]},
        {"s0": [0, 0]},
        {"u0": [30, 40], "u1": [40, 30]},
        [{"u0": "m0", "u1": "m1"}],
        deadlines_s={"m0": 1.0, "m1": 0.4},
    )
    t11 = airtime(11 * MB, gamma(50))
    coarse = evaluate_delay(p, {"s0": ["m0", "m1"]}, granularity="model", delivery="unicast")
    assert coarse.request_delays_s == pytest.approx((t11, 2 * t11), rel=1e-12)
    fine = evaluate_delay(p, {"s0": ["base", "h0", "h1"]})
    t10, t1 = airtime(10 * MB, gamma(50)), airtime(MB, gamma(50))
    # Heads first (|G|/tau = 1/t1 > 2/t10), ties by id, then the shared base once.
    assert fine.request_delays_s == pytest.approx((t10 + 2 * t1, t10 + 2 * t1), rel=1e-12)
    assert t10 + 2 * t1 <= 0.4 < 2 * t11  # the case the deadlines below separate
    assert fine.deadline_hit_ratio == 1.0
    assert coarse.deadline_hit_ratio == 0.5  # u1's whole m1 waits for m0: misses 0.4 s
    with pytest.raises(ValueError, match="unknown model 'base'"):
        evaluate_delay(p, {"s0": ["base"]}, granularity="model")


def test_clusters_limit_joint_transmission_to_the_home_cluster():
    p_args = (
        {"a": 5 * MB},
        {"m": ["a"]},
        {"s0": [0, 0], "s1": [30, 240]},
        {"u0": [30, 40]},
        [{"u0": "m"}],
    )
    split = problem(*p_args, clusters={"c0": ["s0"], "c1": ["s1"]})
    # s1 is outside u0's cluster: its copy is migrated to s0 instead of transmitting.
    got = evaluate_delay(split, {"s0": ["a"], "s1": ["a"]}).mean_s
    assert got == pytest.approx(airtime(5 * MB, gamma(50)), rel=1e-12)
    got = evaluate_delay(split, {"s1": ["a"]}).mean_s
    assert got == pytest.approx(5 * MB / MIGRATION + airtime(5 * MB, gamma(50)), rel=1e-12)


def test_unknown_placement_entries_are_rejected():
    p = problem({"a": MB}, {"m": ["a"]}, {"s0": [0, 0]}, {"u0": [3, 4]}, [{"u0": "m"}])
    with pytest.raises(ValueError, match="unknown node 's9'"):
        evaluate_delay(p, {"s9": ["a"]})
    with pytest.raises(ValueError, match="unknown block 'zz'"):
        evaluate_delay(p, {"s0": ["zz"]})


# ---------------------------------------------------------------------------------------------
# named option: imperfect CSI (docs/delay-model.md section 8)


def test_csi_error_joint_snr_is_the_mrt_bound_by_hand():
    # Two nodes jointly broadcast a to one user at 50 m and 200 m:
    # Gamma = (1 - e) (sqrt g0 + sqrt g1)^2 / (1 + e (g0 + g1)).
    p = problem(
        {"a": 8 * MB},
        {"m": ["a"]},
        {"s0": [0, 0], "s1": [250, 0]},
        {"u0": [50, 0]},
        [{"u0": "m"}],
    )
    place = {"s0": ["a"], "s1": ["a"]}
    g0, g1 = gamma(50), gamma(200)
    e = 0.1
    snr = (1 - e) * (math.sqrt(g0) + math.sqrt(g1)) ** 2 / (1 + e * (g0 + g1))
    got = evaluate_delay(p, place, csi_error_var=e)
    assert got.mean_s == pytest.approx(airtime(8 * MB, snr), rel=1e-12)
    # the error costs airtime: slower than perfect CSI, and more so for larger e
    perfect = evaluate_delay(p, place)
    assert perfect.mean_s == pytest.approx(
        airtime(8 * MB, (math.sqrt(g0) + math.sqrt(g1)) ** 2), rel=1e-12
    )
    assert perfect.mean_s < got.mean_s < evaluate_delay(p, place, csi_error_var=0.5).mean_s


def test_csi_error_default_is_the_reference_rule_bit_for_bit():
    from controller.delay.scenario import tiny_problem

    for seed in range(5):
        p = tiny_problem(seed=seed)
        place = {n: list(p.blocks)[: 1 + seed % 3] for n in p.servers}
        for delivery in ("broadcast", "unicast"):
            ref = evaluate_delay(p, place, delivery=delivery)
            assert evaluate_delay(p, place, delivery=delivery, csi_error_var=0.0) == ref
            assert evaluate_delay(p, place, delivery=delivery, csi_error_var=0.2) != ref


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_csi_error_out_of_range_is_refused(bad):
    p = problem({"a": MB}, {"m": ["a"]}, {"s0": [0, 0]}, {"u0": [30, 40]}, [{"u0": "m"}])
    with pytest.raises(ValueError, match="csi_error_var"):
        evaluate_delay(p, {}, csi_error_var=bad)
