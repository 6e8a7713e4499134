"""Near-duplicate-aware folds, the duplicate report, test-matched weights and the dev novel score."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_workspace
from korean_fixture import DIALOGUES

from competition.data.folds import assign_folds, build_folds, check_folds
from competition.data.loading import load_from_config
from competition.data.shift import exact_duplicates, fold_profile, matched_weights, near_duplicate_clusters
from competition.errors import FoldMismatch
from competition.results.cv import leaderboard
from competition.workspace.config import load_config

STRATEGIES = ("length", "random", "stratify:topic", "group:topic")


def planted_rows() -> pd.DataFrame:
    """The 12 fixture dialogues, each topic twice (so stratify/group have classes), plus a planted
    exact duplicate of f_0 (other white space, its own summary) and a paraphrase cluster of f_5
    (two edits: a changed day, a dropped turn)."""
    rows = pd.DataFrame(DIALOGUES, columns=["fname", "dialogue", "summary", "topic"])
    rows["topic"] = [f"t{i % 6}" for i in range(len(rows))]
    f0, f5 = rows.iloc[0], rows.iloc[5]
    turns = f5["dialogue"].split("\n")
    planted = pd.DataFrame([
        ("p_dup", f0["dialogue"].replace(" ", "  ").replace("\n", " \n"), "다른 요약: 우산을 찾습니다.", "t3"),
        ("p_para1", f5["dialogue"].replace("목요일", "금요일"), f5["summary"].replace("목요일", "금요일"), "t1"),
        ("p_para2", "\n".join(turns[:3]), "#Person2#는 수요일까지 자료를 끝냅니다.", "t4"),
    ], columns=rows.columns)
    return pd.concat([rows, planted], ignore_index=True)


def test_planted_duplicates_share_a_fold_for_every_strategy_and_seed():
    rows = planted_rows()
    clusters = near_duplicate_clusters(list(rows["dialogue"]), "kiwi", 0.5)
    fname = rows["fname"].tolist()
    assert clusters[fname.index("p_dup")] == clusters[fname.index("f_0")]
    assert clusters[fname.index("p_para1")] == clusters[fname.index("p_para2")] == clusters[fname.index("f_5")]
    assert len(set(clusters)) == len(rows) - 3  # nothing else is linked
    split_without = 0
    for strategy in STRATEGIES:
        for seed in range(12):
            fold = assign_folds(rows, k=3, seed=seed, strategy=strategy, clusters=clusters).set_index("fname")["fold"]
            assert fold["p_dup"] == fold["f_0"], (strategy, seed)
            assert fold["p_para1"] == fold["p_para2"] == fold["f_5"], (strategy, seed)
            if strategy != "group:topic":  # group sizes are whatever the unions of topics and clusters are
                assert sorted(np.bincount(fold, minlength=3)) in ([5, 5, 5], [4, 5, 6]), (strategy, seed)
            plain = assign_folds(rows, k=3, seed=seed, strategy=strategy).set_index("fname")["fold"]
            split_without += plain["p_dup"] != plain["f_0"] or plain["p_para1"] != plain["f_5"]
    assert split_without > 0  # without the clusters the same seeds do split them


def test_clustered_folds_ignore_row_order():
    rows = planted_rows()
    shuffled = rows.sample(frac=1, random_state=5).reset_index(drop=True)
    for strategy in STRATEGIES:
        first = assign_folds(rows, 3, 7, strategy, near_duplicate_clusters(list(rows["dialogue"]), "kiwi", 0.5))
        second = assign_folds(shuffled, 3, 7, strategy,
                              near_duplicate_clusters(list(shuffled["dialogue"]), "kiwi", 0.5))
        assert second.set_index("fname")["fold"].loc[first["fname"]].tolist() == first["fold"].tolist()


# sha256 of folds.csv for the real Korean dev.csv (499 rows), k = 5, seed 42, as main wrote them
# before near-duplicate grouping existed: near_duplicates = 0 must keep them byte for byte.
BEFORE_GROUPING = {
    "length": "969f6551d80c8f0ca78a38bf4e1b99d1603202eafc7e0ba2753c7feabd93ec0f",
    "random": "433a0df2cc161a1d654eef957ab75b8cf583ff37732369b1e94eb135b410e6a4",
    "stratify:topic": "da018108a9782895db64ed87d77c5f217b998c381407921a1978b882d552db86",
    "group:topic": "7db94d618626bab64af0d7249cece9ad0d289f6dd046672297a811968c3dcfad",
}


def test_threshold_zero_reproduces_the_folds_of_before(shared_data, tmp_path):
    train = pd.read_csv(shared_data / "dialogsum-ko" / "dev.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(shared_data / "dialogsum-ko" / "test.csv", dtype=str, keep_default_na=False)
    for strategy, digest in BEFORE_GROUPING.items():
        root = write_workspace(tmp_path / strategy.replace(":", "_"), train, test,
                               config=f'[cv]\nstrategy = "{strategy}"\nnear_duplicates = 0\n')
        config = load_config(root / "competition.toml")
        info = build_folds(config, load_from_config(config).train)
        assert "near_duplicates" not in info
        assert hashlib.sha256((root / "folds" / "folds.csv").read_bytes()).hexdigest() == digest, strategy
    # Grouping at 0.5 keeps the 14 near-duplicate clusters of this file whole, so it differs.
    root = write_workspace(tmp_path / "grouped", train, test, config="[cv]\nnear_duplicates = 0.5\n")
    config = load_config(root / "competition.toml")
    info = build_folds(config, load_from_config(config).train)
    assert info["near_duplicates"]["clusters"] > 0
    assert hashlib.sha256((root / "folds" / "folds.csv").read_bytes()).hexdigest() != BEFORE_GROUPING["length"]


def test_folds_record_grouping_and_refuse_another_threshold(tmp_path):
    rows = planted_rows()
    test = rows.head(3).assign(fname=lambda f: "test_" + f["fname"])
    root = write_workspace(tmp_path, rows, test, config="[cv]\nk = 3\nnear_duplicates = 0.5\n")
    config = load_config(root / "competition.toml")
    info = build_folds(config, rows)
    stored = json.loads((root / "folds" / "folds.json").read_text(encoding="utf-8"))
    assert stored["near_duplicates"] == info["near_duplicates"] == {
        "threshold": 0.5, "tokenizer": "kiwi", "clusters": 2, "rows_in_clusters": 5, "largest": 3}
    assert len(check_folds(config, rows)) == len(rows)
    config.cv.near_duplicates = 0.8
    with pytest.raises(FoldMismatch, match=r"near_duplicates = 0.5 on kiwi tokens but .* near_duplicates = 0.8"):
        check_folds(config, rows)
    config.cv.near_duplicates = 0.5
    config.metric.tokenizer = "whitespace"
    with pytest.raises(FoldMismatch, match="on whitespace tokens"):
        check_folds(config, rows)


def test_exact_duplicates_count_planted_groups():
    rows = pd.DataFrame({
        "fname": [f"r{i}" for i in range(7)],
        "dialogue": ["가 나 다", "가  나\n다", "가 나 다", "Hello, there!", "hello there", "다른 대화", "또 다른 대화"],
        "summary": ["요약", "요약", "다른 요약", "s", "s", "x", "y"],
    })
    assert exact_duplicates(rows) == {
        "whitespace": {"groups": 1, "rows": 3, "summaries_differ": 1},
        "case_punctuation": {"groups": 2, "rows": 5, "summaries_differ": 1},
    }


def test_data_check_reports_planted_duplicates(tmp_path, cli):
    rows = planted_rows()
    copy = rows.iloc[[3]].assign(fname="p_copy", summary="또 다른 요약")  # exact copy of f_3, other summary
    train = pd.concat([rows, copy], ignore_index=True)
    test = pd.DataFrame({"fname": ["test_0", "test_1"], "dialogue": [rows["dialogue"][1], "#Person1#: 전혀 새로운 대화."]})
    dev = rows.iloc[[2]].assign(fname="dev_0")
    root = write_workspace(tmp_path, train, test, dev)
    result = cli(["data", "check", "--json", "--plot", tmp_path / "nearest.png"], cwd=root)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["duplicates"]
    assert report["exact_duplicates"]["whitespace"] == {"groups": 2, "rows": 4, "summaries_differ": 2}
    assert report["near_duplicates"] == {"clusters": 3, "rows_in_clusters": 7, "largest": 3}
    nearest = report["nearest"]
    assert nearest["train_to_train"]["rows"] == 16 and nearest["dev_to_train"]["rows"] == 1
    assert nearest["dev_to_train"]["share_at_least"]["0.9"] == 1.0  # dev_0 is f_2 itself
    assert nearest["test_to_train"]["share_at_least"] == {"0.5": 0.5, "0.9": 0.5}
    # every row of the three clusters (two copies, the f_5 edits) has a neighbour at >= 0.9
    assert nearest["train_to_train"]["share_at_least"]["0.9"] == pytest.approx(7 / 16)
    assert (tmp_path / "nearest.png").read_bytes()[:4] == b"\x89PNG"

    text = cli(["data", "check"], cwd=root)
    assert "identical up to white space: 2 group(s), 4 rows, 2 with differing summaries" in text.output
    assert "train -> other train rows" in text.output and "test -> train" in text.output
    for bad, message in ((tmp_path / "nearest.txt", "does not end in .png"),
                         (tmp_path / "missing" / "x.png", "does not exist")):
        refused = cli(["data", "check", "--plot", bad], cwd=root)
        assert refused.exit_code == 2 and message in refused.output and "Traceback" not in refused.output


def test_matched_weights_by_hand():
    oof = np.array([0.05, 0.05, 0.15, 0.95])
    test = np.array([0.05, 0.15, 0.15, 0.15])
    # Bin shares: OOF 0.5 / 0.25 / (bin 9) 0.25, test 0.25 / 0.75 / 0: ratios 0.5, 3, 0; mean 1.
    weights, info = matched_weights(oof, test)
    np.testing.assert_allclose(weights, [0.5, 0.5, 3.0, 0.0])
    assert info["ess"] == pytest.approx(16 / 9.5) and info["unmatched_test_share"] == 0.0
    clipped, _ = matched_weights(oof, test, clip=2.0)
    np.testing.assert_allclose(clipped, np.array([0.5, 0.5, 2.0, 0.0]) / 0.75)
    # A test row in a bin no OOF row reaches is mass the weights cannot represent, and says so.
    _, info = matched_weights(oof, np.array([0.05, 0.55]))
    assert info["unmatched_test_share"] == 0.5
    # The same distribution on both sides: every weight is 1.
    np.testing.assert_allclose(matched_weights(oof, oof)[0], np.ones(4))


def test_fold_profile_is_cached_and_a_damaged_cache_is_recomputed(tmp_path):
    rows = planted_rows()
    folds = assign_folds(rows, k=3, seed=1, strategy="random")
    test = rows.head(2).assign(fname=lambda f: "test_" + f["fname"])
    first = fold_profile(rows, folds, test, None, "kiwi", tmp_path)
    (cached,) = tmp_path.glob("profile-*.json")
    fold_of = folds.set_index("fname")["fold"]
    # p_dup and f_0 are copies; random folds without clusters put them apart here, so each sees the other.
    assert fold_of["p_dup"] != fold_of["f_0"] and first.oof["p_dup"] == pytest.approx(1.0, abs=1e-5)
    assert first.test["test_f_0"] == pytest.approx(1.0, abs=1e-5)
    cached.write_text('{"oof": {"f_0": 0.1', encoding="utf-8")  # cut by a kill
    again = fold_profile(rows, folds, test, None, "kiwi", tmp_path)
    pd.testing.assert_series_equal(again.oof.sort_index(), first.oof.sort_index(), atol=1e-6)
    assert json.loads(cached.read_text(encoding="utf-8"))["oof"]["p_dup"] == pytest.approx(1.0, abs=1e-5)


def test_cv_reports_test_matched_and_dev_novel(tmp_path, cli):
    """Plain folds split the planted copies; an oracle-ish source that copies its nearest training
    summary scores high on those rows. The test-matched final is the hand-computed weighted mean,
    and dev novel scores only the dev rows with no near-duplicate in train."""
    rows = planted_rows()
    test = pd.DataFrame({"fname": ["test_0", "test_1"], "dialogue": [DIALOGUES[1][1], "#Person1#: 전혀 새로운 대화."]})
    dev = pd.DataFrame({"fname": ["dev_0", "dev_1"], "dialogue": [rows["dialogue"][2], "#Person1#: 처음 보는 이야기예요."],
                        "summary": [rows["summary"][2], "처음 보는 이야기를 합니다."]})
    root = write_workspace(tmp_path, rows, test, dev, config=(
        '[cv]\nk = 3\nseed = 1\nstrategy = "random"\nnear_duplicates = 0\nbootstrap = 100\n'
        '[candidates.retrieval]\nkind = "retrieval"\n'))
    assert cli(["folds", "build"], cwd=root).exit_code == 0
    assert cli(["run"], cwd=root).exit_code == 0
    config = load_config(root / "competition.toml")
    (entry,) = leaderboard(config)
    assert entry["test_matched"] is not None and entry["dev_novel_final"] is None  # near_duplicates = 0: no "novel"
    data = load_from_config(config)
    folds = pd.read_csv(root / "folds" / "folds.csv", dtype={"fname": str})
    profile = fold_profile(rows, folds, data.test, data.dev, "kiwi")
    from competition.results.cv import oof_scores
    from competition.data.predictions import load_oof

    oof = load_oof(config, "retrieval")
    scores = oof_scores(config, "retrieval")
    weights, _ = matched_weights(profile.oof.loc[oof["fname"]].to_numpy(), profile.test.to_numpy())
    assert entry["test_matched"]["final"] == pytest.approx(float((scores.row_finals * weights).sum() / weights.sum()))
    assert entry["test_matched"]["final"] != pytest.approx(entry["oof"]["final"])

    (root / "competition.toml").write_text((root / "competition.toml").read_text().replace(
        "near_duplicates = 0", "near_duplicates = 0.5"), encoding="utf-8")
    refused = cli(["cv"], cwd=root)
    assert refused.exit_code == 2 and "near_duplicates = 0 but" in refused.output
    assert cli(["folds", "build", "--force"], cwd=root).exit_code == 0
    assert cli(["run"], cwd=root).exit_code == 0
    result = cli(["cv", "--json"], cwd=root)
    (entry,) = json.loads(result.stdout)
    assert entry["dev_novel_rows"] == 1  # dev_0 is f_2 itself
    from competition.data.loading import references
    from competition.text.metric import get_scorer
    from competition.data.predictions import load_dev

    predicted = load_dev(config, "retrieval").set_index("fname")["summary"]
    expected = get_scorer().score([predicted["dev_1"]], references(dev.iloc[[1]])).final
    assert entry["dev_novel_final"] == pytest.approx(expected)
    text = cli(["cv"], cwd=root).output
    assert "test-matched [95% CI]" in text and "dev novel: the 1 dev rows with no train dialogue at cosine >= 0.5" in text
