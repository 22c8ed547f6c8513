"""bench/delivery.py's pure parts: the seeded workload, the table (every mode measured, the
decentralised marl one included) and the plot. The bench itself runs the testbed
(``python -m bench.delivery``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench import delivery
from bench.delivery import DECENTRALISED, delivered_blocks, plot, table, workload, world_file
from core.world import World

CATALOGUE = ["m-a", "m-b", "m-c", "m-d"]


def test_workload_is_seeded_and_follows_the_popularity() -> None:
    assert workload(16, CATALOGUE, 0) == workload(16, CATALOGUE, 0)
    assert workload(16, CATALOGUE, 0) != workload(16, CATALOGUE, 1)
    counts = Counter(workload(4000, CATALOGUE, 0))
    assert set(counts) <= set(CATALOGUE)
    assert len(counts) >= 3  # Zipf over four models: the top one is not all of it
    assert counts.most_common(1)[0][1] > 4000 / len(CATALOGUE)


def _row(mode: str, k: int, mean: float) -> dict[str, object]:
    return {
        "mode": mode, "k": k, "mean_s": mean, "p95_s": mean, "airtime_s": mean,
        "origin_bytes": 0, "mean_err_pct": 0.0, "sim_mean_s": mean, "sim_p95_s": mean,
        "sim_airtime_s": mean,
    }  # fmt: skip


def test_table_compares_with_coarse_including_the_decentralised_mode(tmp_path: Path) -> None:
    rows = [_row("coarse", 4, 10.0), _row("fine+broadcast", 4, 6.0)]
    rows.append(_row(DECENTRALISED, 4, 5.0))
    text = table(rows)
    assert "| fine+broadcast | 4 | 6.00 (6.00)" in text
    assert text.splitlines()[3].endswith("| -40 % |")
    assert text.splitlines()[4].startswith("| marl (decentralised) | 4 | 5.00 (5.00)")
    assert text.splitlines()[4].endswith("| -50 % |")
    assert "not built" not in text
    out = tmp_path / "delivery.png"
    if plot(rows, out):
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_adapter_is_delivered_with_its_base_by_the_catalogues_rule() -> None:
    rows: list[dict[str, Any]] = [
        {"model_id": "base", "repo_id": "o/base", "base_repo_id": None},
        {"model_id": "lora", "repo_id": "o/lora", "base_repo_id": "o/base"},
    ]
    models = {"base": ["b0", "b1"], "lora": ["a0", "b1"]}
    assert delivered_blocks(rows, models) == {"base": ["b0", "b1"], "lora": ["a0", "b0", "b1"]}


def test_the_world_takes_the_reference_bandwidth(tmp_path: Path) -> None:
    default = World.load(world_file(tmp_path / "20.json")).rates["edge-1"]["area-1"]
    narrow = World.load(world_file(tmp_path / "10.json", bandwidth_hz=10e6))
    assert narrow.rates["edge-1"]["area-1"] < default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bandwidth-mhz", "0"], "--bandwidth-mhz must be > 0"),
        (["--ks", "1,x"], "--ks: comma-separated integers"),
        (["--ks", "0"], "every K must be >= 1"),
        (["--modes", "coarse,nope"], "--modes: unknown nope"),
    ],
)
def test_bad_arguments_are_one_error_line_before_any_testbed(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        delivery.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
