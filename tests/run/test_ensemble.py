"""Ensembles: honest nested hill-climbing, files that cv and submit read (MBR itself: test_mbr.py)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from competition.run import ensemble as ens
from competition.text import mbr
from competition.text.metric import RougeScorer
from competition.workspace.config import EnsembleConfig


# -- hill-climbing and nested selection -------------------------------------------------------
def _planted_case(scorer: RougeScorer, rows: int = 50, folds: int = 5):
    """Three noisy members (0-5 of 8 words wrong per row) and a planted one that copies the
    reference on fold 0 only and is unrelated elsewhere."""
    rng = np.random.default_rng(1)
    vocabulary = [f"w{i}" for i in range(200)]
    references = [list(rng.choice(vocabulary, 8, replace=False)) for _ in range(rows)]
    fold_of = np.arange(rows) % folds
    outputs = []
    for _ in range(3):
        member = []
        for ref in references:
            words = list(ref)
            for position in rng.choice(8, rng.integers(0, 6), replace=False):
                words[position] = str(rng.choice(vocabulary))
            member.append(" ".join(words))
        outputs.append(member)
    outputs.append([" ".join(ref) if fold == 0 else " ".join(rng.choice(vocabulary, 8))
                    for ref, fold in zip(references, fold_of)])
    refs = [" ".join(ref) for ref in references]
    quality = np.stack([scorer.score(member, refs).row_finals for member in outputs], axis=1)
    return mbr.pairwise_utilities(outputs, scorer), quality, fold_of


def test_hill_climb_finds_the_best_weighting(words_scorer):
    utilities, quality, _ = _planted_case(words_scorer)
    noisy_utilities, noisy_quality = utilities[:, :3, :3], quality[:, :3]
    # The winner, by exhaustive search over every pick count up to 8 picks: the consensus of the three
    # noisy copies (equal weights), well above the best single member.
    finals = {picks: ens.ensemble_final(noisy_utilities, noisy_quality, picks)
              for picks in itertools.product(range(9), repeat=3) if 1 <= sum(picks) <= 8}
    best_final = max(finals.values())
    assert best_final > noisy_quality.mean(axis=0).max() + 10
    assert [picks for picks, final in finals.items() if final == best_final] == [(1, 1, 1), (2, 2, 2)]
    counts = ens.hill_climb(noisy_utilities, noisy_quality, max_members=8)
    assert counts.tolist() == [1, 1, 1]  # the fewest picks that reach it
    assert ens.hill_climb(utilities, quality, max_members=1).sum() == 1


def test_nested_selection_never_sees_the_held_out_fold(words_scorer):
    utilities, quality, fold_of = _planted_case(words_scorer)
    config = EnsembleConfig(name="climb", method="hill-climb")
    chosen, fold_weights = ens.nested_choice(config, utilities, quality, fold_of)
    optimistic_weights = ens.choose_weights(config, utilities, quality)
    # Seen on all rows, the planted member is worth picking; chosen without fold 0, it is not.
    assert optimistic_weights[3] > 0
    assert fold_weights[0][3] == 0
    assert all(fold_weights[fold][3] > 0 for fold in (1, 2, 3, 4))
    assert (chosen[fold_of == 0] != 3).all()
    nested = quality[np.arange(len(chosen)), chosen].mean()
    assert nested < ens.ensemble_final(utilities, quality, optimistic_weights)


def test_best_is_chosen_on_the_other_folds(words_scorer):
    utilities, quality, fold_of = _planted_case(words_scorer)
    chosen, fold_weights = ens.nested_choice(EnsembleConfig(name="top", method="best"), utilities, quality, fold_of)
    for fold, weights in fold_weights.items():
        others = fold_of != fold
        assert np.flatnonzero(weights).tolist() == [int(np.argmax(quality[others].mean(axis=0)))]
        assert set(chosen[fold_of == fold].tolist()) == {int(np.argmax(quality[others].mean(axis=0)))}


def test_weights_from_oof_come_from_the_other_folds_only(words_scorer):
    utilities, quality, fold_of = _planted_case(words_scorer)
    config = EnsembleConfig(name="prior", weights_from_oof=True)
    np.testing.assert_allclose(ens.choose_weights(config, utilities, quality), quality.mean(axis=0))
    chosen, fold_weights = ens.nested_choice(config, utilities, quality, fold_of)
    for fold, weights in fold_weights.items():
        held_out = fold_of == fold
        np.testing.assert_allclose(weights, np.maximum(quality[~held_out].mean(axis=0), 1e-6))
        np.testing.assert_array_equal(chosen[held_out], mbr.mbr_choose(utilities[held_out], weights))
    # The planted member is perfect on fold 0 only: had fold 0's scores leaked into fold 0's
    # weights, its weight there would be its all-rows final (over 20), not that of folds 1-4 (about 2).
    assert fold_weights[0][3] * 5 < quality[:, 3].mean()
    assert fold_weights[0][3] == min(fold_weights[0])


def test_diagnostics_oracle_counts_and_gain():
    quality = np.array([[10.0, 30.0], [40.0, 20.0], [50.0, 50.0], [0.0, 60.0]])
    report = ens.diagnostics(quality, np.array([1, 0, 0, 1]), ["a", "b"], resamples=200, seed=0)
    assert report["oracle_final"] == pytest.approx((30 + 40 + 50 + 60) / 4)
    assert report["chosen"] == {"a": 2, "b": 2}
    assert report["best_member"] == "b"
    assert report["gain"] == pytest.approx(((30 - 30) + (40 - 20) + 0 + 0) / 4)
    low, high = report["gain_ci95"]
    assert 0 <= low <= report["gain"] <= high


# -- end to end on a workspace: files that cv and submit read ---------------------------------
FOLDS = 3


def _turns(dialogue: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in dialogue.split("\n")]


MEMBERS = {
    "lead1": lambda row: _turns(row["dialogue"])[0],
    "lead2": lambda row: " ".join(_turns(row["dialogue"])[:2]),
    "last2": lambda row: " ".join(_turns(row["dialogue"])[-2:]),
}


def _write_member(config, name: str, rows: pd.DataFrame, fold_of: dict, test: pd.DataFrame,
                  dev: pd.DataFrame | None, summarise) -> None:
    from competition.data.predictions import write_fold, write_source_outputs
    from competition.run.fold_run import prepare

    def predict(frame):
        return pd.DataFrame({"fname": frame["fname"], "summary": [summarise(r) for _, r in frame.iterrows()]})

    from competition.results.provenance import candidate_hash

    # The hashes the runner records: the candidate's own config hash when competition.toml declares it.
    digest = candidate_hash(config, name)[0] if name in config.candidates else name
    meta = {"kind": "lead", "config_hash": digest, **prepare(config).hashes}
    test_frame = predict(test)
    dev_frame = predict(dev) if dev is not None else None
    for fold in range(FOLDS):
        held_out = rows[[fold_of[f] == fold for f in rows["fname"]]]
        write_fold(config, name, fold, predict(held_out), test_frame, dev_frame, {**meta, "fold": fold})
    write_source_outputs(config, name, test_frame, dev_frame, meta)


@pytest.fixture
def member_workspace(tmp_path, korean_rows):
    """12 train rows in 3 folds (fold = position % 3), 4 test rows, 4 dev rows, three lead members
    and a planted member that copies the reference on fold 0 only and is empty elsewhere (on 8
    rows, an unrelated text could still win a pick as a tie-breaking voter)."""
    import json

    from conftest import write_workspace

    from competition.workspace.config import load_config
    from competition.data.loading import rows_sha256

    dev = korean_rows.head(4).assign(fname=lambda f: "dev_" + f["fname"])
    test = korean_rows.tail(4).assign(fname=lambda f: "test_" + f["fname"])
    config_text = f"""
[cv]
k = {FOLDS}
bootstrap = 100
near_duplicates = 0  # the folds below are written by hand, without near-duplicate grouping

[ensembles.mix]
members = ["lead1", "lead2", "last2"]

[ensembles.climb]
members = ["lead1", "lead2", "last2", "planted"]
method = "hill-climb"

[ensembles.top]
members = ["lead1", "lead2", "last2"]
method = "best"

[ensembles.typo]
members = ["lead1", "lead3"]

[ensembles.prior]
members = ["lead1", "lead2", "last2", "planted"]
weights_from_oof = true
"""
    root = write_workspace(tmp_path, korean_rows, test, dev, config_text)
    fold_of = {fname: position % FOLDS for position, fname in enumerate(korean_rows["fname"])}
    (root / "folds").mkdir()
    pd.DataFrame({"fname": list(fold_of), "fold": list(fold_of.values())}).to_csv(root / "folds" / "folds.csv",
                                                                                 index=False)
    # folds.json as `folds build` writes it: the sha256 of the rows the folds were built from.
    (root / "folds" / "folds.json").write_text(json.dumps(
        {"k": FOLDS, "include_dev": False, "rows": len(korean_rows), "data_sha256": rows_sha256(korean_rows)}),
        encoding="utf-8")
    config = load_config(root / "competition.toml")
    for name, summarise in MEMBERS.items():
        _write_member(config, name, korean_rows, fold_of, test, dev, summarise)
    references = dict(zip(korean_rows["fname"], korean_rows["summary"]))
    _write_member(config, "planted", korean_rows, fold_of, test, dev,
                  lambda row: references.get(row["fname"]) if fold_of.get(row["fname"]) == 0 else "")
    return root


def test_mbr_ensemble_is_a_source_that_cv_reads(member_workspace, cli, korean_rows):
    import json

    from competition.workspace.config import load_config
    from competition.results.cv import leaderboard
    from competition.data.predictions import load_oof, load_test

    result = cli(["ensemble", "mix", "--json"], cwd=member_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["members"] == ["lead1", "lead2", "last2"]
    assert sum(report["diagnostics"]["chosen"].values()) == len(korean_rows)
    assert report["optimistic_final"] == pytest.approx(report["oof_final"])  # uniform weights: nothing chosen
    # The oracle takes each row's best member output, scored independently here; MBR falls short of it.
    scorer = RougeScorer("kiwi", "official", "mean")
    references = [[summary] for summary in korean_rows["summary"]]
    member_rows = np.stack([scorer.score([summarise(row) for _, row in korean_rows.iterrows()], references).row_finals
                            for summarise in MEMBERS.values()], axis=1)
    assert report["diagnostics"]["oracle_final"] == pytest.approx(member_rows.max(axis=1).mean())
    assert report["diagnostics"]["oracle_final"] > report["oof_final"]

    config = load_config(member_workspace / "competition.toml")
    oof = load_oof(config, "mix")
    members = {name: load_oof(config, name).set_index("fname")["summary"] for name in MEMBERS}
    for fname, summary in zip(oof["fname"], oof["summary"]):
        assert summary in {members[name][fname] for name in MEMBERS}
    ensemble_test = load_test(config, "mix")
    assert ensemble_test["fname"].tolist() == [f"test_{f}" for f in korean_rows.tail(4)["fname"]]
    member_tests = [load_test(config, name)["summary"].tolist() for name in MEMBERS]
    for row, summary in enumerate(ensemble_test["summary"]):
        assert summary in {outputs[row] for outputs in member_tests}
    assert sum(report["test_chosen"].values()) == len(ensemble_test)
    assert all((member_workspace / "runs" / "mix" / f"fold_{fold}" / "test.csv").exists() for fold in range(FOLDS))

    board = {entry["name"]: entry for entry in leaderboard(config)}
    assert board["mix"]["complete"]
    assert board["mix"]["oof"]["final"] == pytest.approx(report["oof_final"])
    assert board["mix"]["dev_final"] == pytest.approx(report["dev_final"])


def test_hill_climb_report_keeps_the_planted_member_out_of_its_held_out_fold(member_workspace, cli):
    import json

    result = cli(["ensemble", "climb", "--json"], cwd=member_workspace)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fold_weights"]["0"]["planted"] == 0
    assert report["weights"]["planted"] > 0  # chosen on all rows, it looks great
    assert report["optimistic_final"] > report["oof_final"]


def test_oof_weights_of_a_fold_are_the_members_finals_on_the_other_folds(member_workspace, cli, korean_rows):
    import json

    from competition.text.metric import RougeScorer

    report = json.loads(cli(["ensemble", "prior", "--json"], cwd=member_workspace).stdout)
    scorer = RougeScorer("kiwi", "official", "mean")
    fold_of = np.arange(len(korean_rows)) % FOLDS
    references = dict(zip(korean_rows["fname"], korean_rows["summary"]))
    summarisers = {**MEMBERS, "planted": lambda row: row["summary"] if fold_of[row.name] == 0 else ""}
    for fold in range(FOLDS):
        others = korean_rows[fold_of != fold]
        for member, summarise in summarisers.items():
            outputs = [summarise(row) for _, row in others.iterrows()]
            final = scorer.score(outputs, [[references[f]] for f in others["fname"]]).final
            assert report["fold_weights"][str(fold)][member] == pytest.approx(max(final, 1e-6)), (fold, member)
    # Empty outside fold 0, the planted member weighs (almost) nothing where fold 0 is held out.
    assert report["fold_weights"]["0"]["planted"] == pytest.approx(1e-6)
    assert report["weights"]["planted"] > 1


def test_a_member_predicted_on_another_test_or_dev_file_is_refused(member_workspace, cli, korean_rows):
    from competition.workspace.config import load_config

    assert cli(["ensemble", "mix"], cwd=member_workspace).exit_code == 0
    test = pd.read_csv(member_workspace / "data" / "test.csv", dtype=str, keep_default_na=False)
    test.loc[0, "dialogue"] = "#Person1#: 새 시험 대화입니다.\n#Person2#: 네, 알겠습니다."
    test.to_csv(member_workspace / "data" / "test.csv", index=False)
    # lead1 and lead2 are re-run on the new test file; last2 still holds the old one's predictions.
    config = load_config(member_workspace / "competition.toml")
    fold_of = {fname: position % FOLDS for position, fname in enumerate(korean_rows["fname"])}
    dev = korean_rows.head(4).assign(fname=lambda f: "dev_" + f["fname"])
    for name in ("lead1", "lead2"):
        _write_member(config, name, korean_rows, fold_of, test, dev, MEMBERS[name])
    refused = cli(["ensemble", "mix"], cwd=member_workspace)
    assert refused.exit_code == 2
    assert ("member 'last2' is not current: folds 0, 1, 2 were predicted on another test file than the current "
            "data/test.csv") in refused.output
    assert "rerun it with `competition run last2`" in refused.output  # stale folds re-run without --force
    _write_member(config, "last2", korean_rows, fold_of, test, dev, MEMBERS["last2"])
    assert cli(["ensemble", "mix"], cwd=member_workspace).exit_code == 0

    changed_dev = dev.assign(summary=dev["summary"] + " 끝.")
    changed_dev.to_csv(member_workspace / "data" / "dev.csv", index=False)
    stale_dev = cli(["ensemble", "mix"], cwd=member_workspace)
    assert stale_dev.exit_code == 2
    assert ("member 'lead1' is not current: folds 0, 1, 2 were predicted on another dev file than the current "
            "data/dev.csv") in stale_dev.output
    # An ensemble is a member like any other: rebuilt with `competition ensemble`, not `run`.
    for name, summarise in MEMBERS.items():
        _write_member(config, name, korean_rows, fold_of, test, changed_dev, summarise)
    with open(member_workspace / "competition.toml", "a", encoding="utf-8") as toml:
        toml.write('\n[ensembles.outer]\nmembers = ["mix", "lead1", "lead2"]\n')
    stale_ensemble = cli(["ensemble", "outer"], cwd=member_workspace)
    assert stale_ensemble.exit_code == 2
    assert "member 'mix'" in stale_ensemble.output and "`competition ensemble mix`" in stale_ensemble.output
    assert cli(["ensemble", "mix"], cwd=member_workspace).exit_code == 0
    assert cli(["ensemble", "outer"], cwd=member_workspace).exit_code == 0


def test_stale_labelled_data_names_train_and_dev_when_dev_is_in_the_folds(korean_workspace):
    """With include_dev the data hash covers train and dev: the refusal names both files."""
    from competition.workspace.config import load_config
    from competition.data.predictions import write_fold
    from competition.results.provenance import source_problems

    hashes = {"data_sha256": "now", "folds_sha256": "f", "test_sha256": "t", "dev_sha256": None}
    for include_dev, files in ((False, "data/train.csv:"), (True, "data/train.csv and data/dev.csv:")):
        (korean_workspace / "competition.toml").write_text(f"[cv]\ninclude_dev = {str(include_dev).lower()}\n",
                                                           encoding="utf-8")
        config = load_config(korean_workspace / "competition.toml")
        write_fold(config, "lead", 0, pd.DataFrame({"fname": ["f_0"], "summary": ["s"]}), None, None,
                   {**hashes, "data_sha256": "before"})
        assert source_problems(config, "lead", hashes, k=1, missing_ok=True) == [
            f"fold 0 was predicted on other labelled data than the current {files.rstrip(':')}"]


def test_best_prints_a_report_and_no_name_lists_the_ensembles(member_workspace, cli):
    result = cli(["ensemble", "top"], cwd=member_workspace)
    assert result.exit_code == 0, result.output
    assert "OOF final" in result.output and "oracle" in result.output
    listing = cli(["ensemble"], cwd=member_workspace)
    assert listing.exit_code == 0
    assert "mix" in listing.output and "climb" in listing.output


def test_user_mistakes_are_one_line_errors(member_workspace, cli):
    missing = cli(["ensemble", "typo"], cwd=member_workspace)
    assert missing.exit_code == 2
    assert "'lead3' has no predictions" in missing.output and "competition run lead3" in missing.output
    unknown = cli(["ensemble", "mixx"], cwd=member_workspace)
    assert unknown.exit_code == 2 and "did you mean 'mix'" in unknown.output
    with open(member_workspace / "competition.toml", "a", encoding="utf-8") as toml:
        toml.write('\n[ensembles.weighted]\nmembers = ["lead1", "lead2"]\nweights = [1.0]\n')
    weighted = cli(["ensemble", "weighted"], cwd=member_workspace)
    assert weighted.exit_code == 2 and "1 weights for 2 members" in weighted.output
    with open(member_workspace / "competition.toml", "a", encoding="utf-8") as toml:
        toml.write('\n[ensembles.vote]\nmethod = "majority"\n')
    bad_method = cli(["ensemble", "mix"], cwd=member_workspace)
    assert bad_method.exit_code == 2 and "[ensembles.vote] method = 'majority'" in bad_method.output


def test_an_ensemble_is_submitted_like_a_candidate(member_workspace, cli, korean_rows):
    import json

    assert cli(["ensemble", "mix"], cwd=member_workspace).exit_code == 0
    result = cli(["submit", "mix", "--json"], cwd=member_workspace)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["source"] == "mix" and row["file"].endswith("-mix.csv")
    submitted = pd.read_csv(member_workspace / "submissions" / row["file"], dtype=str, keep_default_na=False)
    ensemble_test = pd.read_csv(member_workspace / "runs" / "mix" / "test.csv", dtype=str, keep_default_na=False)
    assert submitted["fname"].tolist() == [f"test_{f}" for f in korean_rows.tail(4)["fname"]]
    assert submitted["summary"].tolist() == ensemble_test["summary"].tolist()
    assert float(row["oof_final"]) > 0


def test_star_takes_finished_candidates_and_a_half_run_member_is_refused(member_workspace, cli, korean_rows):
    import json

    from competition.workspace.config import load_config
    from competition.data.predictions import write_fold

    with open(member_workspace / "competition.toml", "a", encoding="utf-8") as toml:
        toml.write('\n[candidates.lead1]\nkind = "lead"\nturns = 1\n\n[candidates.lead2]\nkind = "lead"\nturns = 2\n'
                   '\n[candidates.half]\nkind = "lead"\n\n[ensembles.every]\n\n'
                   '[ensembles.with_half]\nmembers = ["lead1", "half"]\n')
    config = load_config(member_workspace / "competition.toml")
    fold_of = {fname: position % FOLDS for position, fname in enumerate(korean_rows["fname"])}
    test = pd.read_csv(member_workspace / "data" / "test.csv", dtype=str, keep_default_na=False)
    dev = pd.read_csv(member_workspace / "data" / "dev.csv", dtype=str, keep_default_na=False)
    for name in ("lead1", "lead2"):  # their files as `run` writes them for the config declared now
        _write_member(config, name, korean_rows, fold_of, test, dev, MEMBERS[name])
    held_out = korean_rows.iloc[::FOLDS]  # fold 0 only
    write_fold(config, "half", 0, held_out.assign(summary="요약"), None, None, {"kind": "lead"})

    every = cli(["ensemble", "every", "--json"], cwd=member_workspace)
    assert every.exit_code == 0, every.output
    assert json.loads(every.stdout)["members"] == ["lead1", "lead2"]
    refused = cli(["ensemble", "with_half"], cwd=member_workspace)
    assert refused.exit_code == 2
    assert "member 'half' is not current: folds 1, 2 were not run" in refused.output
    assert "competition run half" in refused.output


def test_mbr_over_two_members_warns_that_it_cannot_choose(member_workspace, cli):
    """MBR over two members ties on every row (each is as close to the other), so every row goes to
    the first: the ensemble warns and names the methods that can choose; three members do not warn."""
    import json

    with open(member_workspace / "competition.toml", "a", encoding="utf-8") as toml:
        toml.write('\n[ensembles.pair]\nmembers = ["lead1", "lead2"]\n')
    pair = cli(["ensemble", "pair", "--json"], cwd=member_workspace)
    assert pair.exit_code == 0, pair.output
    report = json.loads(pair.stdout)
    assert report["diagnostics"]["chosen"] == {"lead1": 12, "lead2": 0}  # what the warning says happens
    assert "warning: ensemble 'pair': MBR over two members (lead1, lead2) cannot choose by agreement" in pair.stderr
    assert 'use method = "best" or "hill-climb"' in pair.stderr
    three = cli(["ensemble", "mix"], cwd=member_workspace)
    assert three.exit_code == 0 and "warning" not in three.stderr


# -- [cv] objective ---------------------------------------------------------------------------------
def _weighted_case(seed: int = 24, rows: int = 40, members: int = 4):
    """Random row finals and symmetric agreements; 30% of rows weigh 3, the rest 0.5 (rows with and
    without close training neighbours, as test-matched weights make them)."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0, 40, (rows, members))
    utilities = rng.uniform(0, 1, (rows, members, members))
    utilities = (utilities + utilities.transpose(0, 2, 1)) / 2
    utilities[:, np.arange(members), np.arange(members)] = 1
    return utilities, quality, np.where(rng.uniform(size=rows) < 0.3, 3.0, 0.5)


def test_hill_climb_reaches_the_exhaustive_optimum_of_the_weighted_objective():
    import itertools

    from competition.run.ensemble import ensemble_final, hill_climb

    utilities, quality, row_weights = _weighted_case()
    best, best_counts = -1.0, None
    for counts in itertools.product(range(5), repeat=quality.shape[1]):
        if 0 < sum(counts) <= 4:
            final = ensemble_final(utilities, quality, np.array(counts, dtype=float), row_weights)
            if final > best + 1e-9:
                best, best_counts = final, counts
    weighted = hill_climb(utilities, quality, 4, row_weights)
    assert ensemble_final(utilities, quality, weighted, row_weights) == pytest.approx(best)
    assert tuple(weighted.astype(int)) == best_counts
    plain = hill_climb(utilities, quality, 4)  # the same search on the unweighted objective ...
    assert ensemble_final(utilities, quality, plain, row_weights) < best - 1  # ... misses it by points


def test_ensembles_weigh_rows_as_cv_weighs_the_test_matched_final(tmp_path, shared_data):
    from conftest import real_dev_workspace

    from competition.workspace.config import load_config
    from competition.results.cv import leaderboard, oof_scores
    from competition.run.ensemble import resolve_ensemble
    from competition.data.predictions import load_oof
    from competition.results.provenance import StaleSource
    from competition.run.runner import run_candidates
    from competition.data.shift import weighted_mean

    root = real_dev_workspace(tmp_path, shared_data)
    with open(root / "competition.toml", "a", encoding="utf-8") as toml:
        toml.write('\n[ensembles.top]\nmembers = ["lead", "retrieval"]\nmethod = "best"\n'
                   '\n[ensembles.mix]\nmembers = ["lead", "retrieval"]\n')
    config = load_config(root / "competition.toml")
    run_candidates(config, ["lead", "retrieval"], progress=False, echo=lambda line: None)
    inputs = resolve_ensemble(config, "top")
    weights = pd.Series(inputs.row_weights, index=inputs.fnames)
    assert weights.std() > 0.1  # real rows: the test-matched weights differ between rows
    entry = leaderboard(config, ["lead"])[0]
    row_finals = oof_scores(config, "lead").row_finals
    fnames = load_oof(config, "lead")["fname"]
    assert weighted_mean(row_finals, weights.loc[fnames].to_numpy()) == pytest.approx(entry["test_matched"]["final"])
    assert resolve_ensemble(config, "mix").row_weights is None  # plain MBR chooses by no score
    config.cv.objective = "oof"  # lead chose its N by the other objective: it is stale now
    with pytest.raises(StaleSource, match="another config of lead"):
        resolve_ensemble(config, "top")
