"""seeds = [13, 42, 77] on a candidate: one source NAME#sSEED per seed (own folders, meta, cache),
and NAME their per-row MBR, all ranked by `competition cv`."""
from __future__ import annotations

import json

import pytest

from competition.config import parse_config
from competition.errors import ConfigError


def test_seeds_expand_into_one_candidate_per_seed_and_an_mbr_ensemble():
    config = parse_config({"candidates": {"lead": {"kind": "lead", "seeds": [13, 42, 77], "turns": 2}}})
    members = ["lead#s13", "lead#s42", "lead#s77"]
    assert list(config.candidates) == members and config.seed_groups == {"lead": members}
    assert [config.candidates[m].seed for m in members] == [13, 42, 77]
    assert all(config.candidates[m].params.turns == 2 and not config.candidates[m].seeds for m in members)
    ensemble = config.ensembles["lead"]
    assert (ensemble.members, ensemble.method) == (members, "mbr")


@pytest.mark.parametrize("table, expected", [
    ({"seeds": [13]}, "seeds = [13] should be two or more distinct whole numbers >= 0"),
    ({"seeds": [13, 13]}, "seeds = [13, 13] should be two or more distinct"),
    ({"seeds": [1, -2]}, "seeds = [1, -2] should be two or more"),
    ({"seeds": "13"}, "seeds = '13' should be two or more"),
    ({"seeds": [1, 2], "seed": 3}, "seed = 3 and seeds = [1, 2]: keep one of them"),
])
def test_bad_seeds_are_config_errors(table, expected):
    with pytest.raises(ConfigError) as error:
        parse_config({"candidates": {"lead": {"kind": "lead", **table}}})
    assert f"[candidates.lead] {expected}" in str(error.value)


def test_a_seed_group_clashing_with_an_ensemble_is_refused():
    with pytest.raises(ConfigError, match="names used by both a candidate and an ensemble: lead"):
        parse_config({"candidates": {"lead": {"kind": "lead", "seeds": [1, 2]}},
                      "ensembles": {"lead": {"method": "best"}}})


def test_three_seeds_give_three_sources_and_their_mbr_ranked_by_cv(cli, korean_workspace):
    config = korean_workspace / "competition.toml"
    config.write_text(config.read_text() + '[cv]\nk = 2\n\n[candidates.lead]\nkind = "lead"\nseeds = [13, 42, 77]\n',
                      encoding="utf-8")
    assert cli(["folds", "build"], cwd=korean_workspace).exit_code == 0
    result = cli(["run", "lead", "--json"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    members = ["lead#s13", "lead#s42", "lead#s77"]
    assert list(report) == [*members, "lead"]
    assert report["lead"]["members"] == members and report["lead"]["complete"]
    hashes = set()
    for member, seed in zip(members, (13, 42, 77)):
        meta = json.loads((korean_workspace / "runs" / member / "fold_0" / "meta.json").read_text())
        assert meta["config"]["seed"] == seed and meta["name"] == member
        hashes.add(meta["config_hash"])
    assert len(hashes) == 3  # own config hash, own cache
    source = json.loads((korean_workspace / "runs" / "lead" / "meta.json").read_text())
    assert source["kind"] == "ensemble" and source["members"] == members

    board = {entry["name"]: entry for entry in json.loads(cli(["cv", "--json"], cwd=korean_workspace).stdout)}
    assert set(members) | {"lead"} <= set(board)
    assert all(board[name]["complete"] for name in [*members, "lead"])

    again = json.loads(cli(["run", "--json"], cwd=korean_workspace).stdout)  # every enabled seed, all cached
    assert all(again[member]["ran"] == [] for member in members) and again["lead"]["complete"]
