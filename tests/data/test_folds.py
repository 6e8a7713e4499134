"""Folds: deterministic bytes, balanced and stratified, refusals, and the data check later stages rely on."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_workspace

from competition.data.folds import assign_folds, build_folds, check_folds, load_folds
from competition.data.loading import load_from_config, read_split
from competition.errors import ConfigError, FoldMismatch
from competition.workspace.config import Config, load_config


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture
def korean_dev_workspace(tmp_path, shared_data):
    """The real Korean dev.csv (499 rows) as train, the real test.csv, no dev file."""
    train = read(shared_data / "dialogsum-ko" / "dev.csv")
    test = read(shared_data / "dialogsum-ko" / "test.csv")
    return write_workspace(tmp_path, train, test)


def test_build_is_deterministic_and_balanced(korean_dev_workspace, cli):
    result = cli(["folds", "build", "--json"], cwd=korean_dev_workspace)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    csv_bytes = (korean_dev_workspace / "folds" / "folds.csv").read_bytes()
    json_bytes = (korean_dev_workspace / "folds" / "folds.json").read_bytes()
    assert info["changed"] and info["rows"] == 499 and info["k"] == 5 and info["strategy"] == "length"
    assert info["rows_per_fold"] == [100, 100, 100, 100, 99]
    stored = json.loads(json_bytes)
    assert stored["data_sha256"] == info["data_sha256"] and stored["seed"] == 42

    again = cli(["folds", "build"], cwd=korean_dev_workspace)
    assert again.exit_code == 0 and again.stdout.startswith("unchanged")
    assert (korean_dev_workspace / "folds" / "folds.csv").read_bytes() == csv_bytes
    assert (korean_dev_workspace / "folds" / "folds.json").read_bytes() == json_bytes

    folds = read(korean_dev_workspace / "folds" / "folds.csv")
    train = read(korean_dev_workspace / "data" / "train.csv")
    assert folds["fname"].tolist() == train["fname"].tolist()  # file order = data order


def test_assignment_ignores_row_order_and_length_bins_spread_lengths(shared_data):
    rows = read(shared_data / "dialogsum-ko" / "dev.csv")
    folds = assign_folds(rows, k=5, seed=7, strategy="length")
    shuffled = assign_folds(rows.sample(frac=1, random_state=3), k=5, seed=7, strategy="length")
    assert shuffled.set_index("fname")["fold"].loc[folds["fname"]].tolist() == folds["fold"].tolist()
    assert assign_folds(rows, k=5, seed=8, strategy="length")["fold"].tolist() != folds["fold"].tolist()

    lengths = rows["dialogue"].str.len().to_numpy()
    quartiles = np.quantile(lengths, [0.25, 0.5, 0.75])
    for fold in range(5):
        mine = lengths[folds["fold"].to_numpy() == fold]
        # Every fold holds its share of each length quartile (random folds would drift further).
        share = np.histogram(mine, bins=[0, *quartiles, lengths.max() + 1])[0] / len(mine)
        assert np.all(np.abs(share - 0.25) < 0.06), (fold, share)


def test_group_keeps_a_topic_in_one_fold_and_stratify_spreads_classes(shared_data):
    rows = read(shared_data / "dialogsum-ko" / "dev.csv")
    grouped = assign_folds(rows, k=5, seed=42, strategy="group:topic").assign(topic=rows["topic"])
    assert grouped.groupby("topic")["fold"].nunique().max() == 1
    sizes = grouped["fold"].value_counts()
    assert sizes.max() - sizes.min() <= rows["topic"].value_counts().max()

    stratified = assign_folds(rows, k=5, seed=42, strategy="stratify:topic").assign(topic=rows["topic"])
    counts = rows["topic"].value_counts()
    for topic in counts[counts >= 5].index:
        per_fold = stratified[stratified["topic"] == topic]["fold"].value_counts().reindex(range(5), fill_value=0)
        assert per_fold.max() - per_fold.min() <= 1, topic
    assert stratified["fold"].value_counts().max() - stratified["fold"].value_counts().min() <= 1


def test_bad_strategies_and_k_are_refused_with_the_fix(korean_rows):
    with pytest.raises(ConfigError, match="group:COLUMN"):
        assign_folds(korean_rows, strategy="length:topic")
    with pytest.raises(ConfigError, match="no column 'speaker'"):
        assign_folds(korean_rows, strategy="group:speaker")
    with pytest.raises(ConfigError, match="lower k"):
        assign_folds(korean_rows, k=20)
    with pytest.raises(ConfigError, match="fewer than k"):
        assign_folds(korean_rows.assign(topic="같은 주제"), k=3, strategy="group:topic")


def test_rebuilding_different_folds_needs_force(korean_dev_workspace, cli):
    assert cli(["folds", "build"], cwd=korean_dev_workspace).exit_code == 0
    before = (korean_dev_workspace / "folds" / "folds.csv").read_bytes()
    refused = cli(["folds", "build", "--seed", "1"], cwd=korean_dev_workspace)
    assert refused.exit_code == 2
    assert "already exists with different folds" in refused.output and "--force" in refused.output
    assert (korean_dev_workspace / "folds" / "folds.csv").read_bytes() == before
    forced = cli(["folds", "build", "--seed", "1", "--k", "3", "--force"], cwd=korean_dev_workspace)
    assert forced.exit_code == 0, forced.output
    assert sorted(read(korean_dev_workspace / "folds" / "folds.csv")["fold"].unique()) == ["0", "1", "2"]


def test_changed_data_is_a_fold_mismatch_everywhere(korean_workspace, cli):
    (korean_workspace / "competition.toml").write_text("[cv]\nk = 3\n", encoding="utf-8")
    config = load_config(korean_workspace / "competition.toml")
    train = load_from_config(config).train
    build_folds(config, train)
    assert check_folds(config, train)["fname"].tolist() == train["fname"].tolist()

    edited = train.copy()
    edited.loc[0, "summary"] = edited.loc[0, "summary"] + " 추가"
    with pytest.raises(FoldMismatch, match="no longer matches"):
        check_folds(config, edited)
    edited.to_csv(korean_workspace / "data" / "train.csv", index=False)
    with (korean_workspace / "competition.toml").open("a", encoding="utf-8") as file:
        file.write('[candidates.lead]\nkind = "lead"\n')
    result = cli(["run", "lead"], cwd=korean_workspace)
    assert result.exit_code == 2
    assert "no longer matches" in result.output and "run `competition folds build` (" in result.output
    assert "add --force only if it refuses" in result.output
    assert not (korean_workspace / "runs").exists()


def test_include_dev_must_match_the_folds(korean_workspace, cli):
    (korean_workspace / "competition.toml").write_text('[candidates.lead]\nkind = "lead"\n', encoding="utf-8")
    assert cli(["folds", "build", "--include-dev", "--k", "3"], cwd=korean_workspace).exit_code == 0
    assert len(load_folds(load_config(korean_workspace / "competition.toml"))) == 16  # 12 train + 4 dev
    result = cli(["run", "lead"], cwd=korean_workspace)
    assert result.exit_code == 2 and "include_dev = true" in result.output


def test_folds_with_another_k_than_the_config_are_refused(korean_workspace, cli):
    """Folds built with k = 3, then [cv] k = 5: run and cv stop before running anything, with the two
    ways out (set k back, or rebuild the folds)."""
    toml = korean_workspace / "competition.toml"
    toml.write_text('[cv]\nk = 3\n[candidates.lead]\nkind = "lead"\n', encoding="utf-8")
    assert cli(["folds", "build"], cwd=korean_workspace).exit_code == 0
    assert cli(["run", "lead"], cwd=korean_workspace).exit_code == 0
    toml.write_text(toml.read_text(encoding="utf-8").replace("k = 3", "k = 5"), encoding="utf-8")
    for command in (["run", "lead"], ["cv"]):
        result = cli(command, cwd=korean_workspace)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "holds k = 3 folds but [cv] k = 5: set [cv] k = 3 in competition.toml, or rebuild" in result.output


def test_missing_folds_say_how_to_build_them(korean_workspace, cli):
    (korean_workspace / "competition.toml").write_text('[candidates.lead]\nkind = "lead"\n', encoding="utf-8")
    result = cli(["run", "lead"], cwd=korean_workspace)
    assert result.exit_code == 2 and "competition folds build" in result.output


def test_missing_folds_json_is_a_fold_mismatch(korean_workspace, cli):
    """Without folds.json's sha256, edited dialogues or summaries under the same fnames would pass."""
    config = load_config(korean_workspace / "competition.toml")
    train = load_from_config(config).train
    build_folds(config, train, k=3)
    json_path = korean_workspace / "folds" / "folds.json"
    json_path.unlink()
    with pytest.raises(FoldMismatch, match=r"folds\.json is missing.*run `competition folds build` \(.*"
                                           r"add --force only if it refuses"):
        check_folds(config, train)
    json_path.write_text("{not json", encoding="utf-8")
    with pytest.raises(FoldMismatch, match="not valid JSON.*run `competition folds build`"):
        check_folds(config, train)
    json_path.unlink()

    with (korean_workspace / "competition.toml").open("a", encoding="utf-8") as file:
        file.write('[cv]\nk = 3\n[candidates.lead]\nkind = "lead"\n')
    result = cli(["run", "lead"], cwd=korean_workspace)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "folds.json is missing" in result.output and "run `competition folds build`" in result.output
    assert not (korean_workspace / "runs").exists()

    folds_csv = (korean_workspace / "folds" / "folds.csv").read_bytes()
    rebuilt = cli(["folds", "build"], cwd=korean_workspace)  # what the message says: no --force needed
    assert rebuilt.exit_code == 0, rebuilt.output
    assert json_path.exists() and (korean_workspace / "folds" / "folds.csv").read_bytes() == folds_csv
    assert check_folds(load_config(korean_workspace / "competition.toml"), train)["fname"].tolist() == \
        train["fname"].tolist()


@pytest.mark.slow
def test_english_train_folds_are_deterministic_and_balanced(shared_data, tmp_path):
    """The 12,460 English DialogSum train rows with the default near-duplicate grouping: the same
    bytes whatever the row order, fold sizes within one, no duplicate split across folds, and
    dialogue lengths still spread evenly over the folds."""
    rows = read_split(shared_data / "dialogsum-en" / "train.jsonl", "train")
    assert len(rows) == 12460
    shuffled = rows.sample(frac=1, random_state=11).reset_index(drop=True)
    outputs = []
    for name, frame in (("ordered", rows), ("shuffled", shuffled)):
        config = Config(path=tmp_path / name / "competition.toml")
        config.metric.tokenizer = "english"
        info = build_folds(config, frame)
        folder = tmp_path / name / "folds"
        written = read(folder / "folds.csv")
        assert written["fname"].tolist() == frame["fname"].tolist()  # file order = data order
        by_fname = written.sort_values("fname").to_csv(index=False).encode()
        stored = json.loads((folder / "folds.json").read_text(encoding="utf-8"))
        stored.pop("folds_sha256")  # the sha256 of folds.csv's bytes, which follow the data's row order
        outputs.append((by_fname, stored, info))
    (ordered_csv, ordered_json, info), (shuffled_csv, shuffled_json, _) = outputs
    assert ordered_csv == shuffled_csv and ordered_json == shuffled_json
    assert info["rows"] == 12460 and info["rows_per_fold"] == [2492] * 5
    assert info["near_duplicates"]["threshold"] == 0.5 and info["near_duplicates"]["clusters"] > 1000

    folds = read(tmp_path / "ordered" / "folds" / "folds.csv").astype({"fold": int})
    fold_of = folds.set_index("fname")["fold"]
    # Dialogues identical up to white space (found without TF-IDF): never in two folds.
    same_text = rows["dialogue"].map(lambda text: " ".join(text.split()))
    spread = fold_of.loc[rows["fname"]].groupby(same_text.to_numpy()).nunique()
    assert (same_text.duplicated(keep=False).sum() == 1190) and spread.max() == 1
    # Pairs with cosine >= 0.9 by sklearn's own TF-IDF on the same tokens: none crosses folds.
    from sklearn.feature_extraction.text import TfidfVectorizer
    from competition.text.tokenizers import get_tokenizer

    tokens = get_tokenizer("english").tokenize_many(list(rows["dialogue"]))
    matrix = TfidfVectorizer(analyzer=lambda t: t, sublinear_tf=True).fit_transform(tokens)
    fold_array = fold_of.loc[rows["fname"]].to_numpy()
    crossing = close = 0
    for start in range(0, len(rows), 3000):
        block = (matrix[start:start + 3000] @ matrix.T).tocoo()
        near = (block.data >= 0.9) & (block.row + start != block.col)
        close += int(near.sum())
        crossing += int((fold_array[block.row[near] + start] != fold_array[block.col[near]]).sum())
    assert close > 3000 and crossing == 0

    # Grouping keeps the length stratification close: per length bin, folds within 20 of ~249 rows.
    lengths = rows["dialogue"].str.len().to_numpy()
    rank = np.lexsort((rows["fname"].to_numpy(), lengths)).argsort()
    bins = rank * 10 // len(rows)
    table = pd.crosstab(bins, fold_array)
    assert (table.max(axis=1) - table.min(axis=1)).max() <= 20, table


def test_english_plain_length_folds_stratify_exactly(shared_data):
    """Without clusters the length strategy deals every length bin to within one row."""
    rows = read_split(shared_data / "dialogsum-en" / "train.jsonl", "train")
    folds = assign_folds(rows, k=5, seed=42, strategy="length")
    assert assign_folds(rows, k=5, seed=43, strategy="length")["fold"].tolist() != folds["fold"].tolist()
    uneven = assign_folds(rows.head(12458), k=5, seed=42, strategy="length")["fold"].value_counts()
    assert uneven.max() - uneven.min() <= 1

    # Length stratification: within each of the 10 length bins the folds differ by at most one row.
    lengths = rows["dialogue"].str.len().to_numpy()
    rank = np.lexsort((rows["fname"].to_numpy(), lengths)).argsort()
    bins = rank * 10 // len(rows)
    table = pd.crosstab(bins, folds["fold"].to_numpy())
    assert table.shape == (10, 5)
    assert (table.max(axis=1) - table.min(axis=1)).max() <= 1, table
    quartiles = np.quantile(lengths, [0.25, 0.5, 0.75])
    for fold in range(5):
        mine = lengths[folds["fold"].to_numpy() == fold]
        share = np.histogram(mine, bins=[0, *quartiles, lengths.max() + 1])[0] / len(mine)
        assert np.all(np.abs(share - 0.25) < 0.01), (fold, share)
        assert abs(np.median(mine) - np.median(lengths)) < 0.02 * np.median(lengths)


# -- near_duplicates = "auto" ---------------------------------------------------------------------
def _words(start: int, count: int) -> list[str]:
    return [f"w{i}" for i in range(start, start + count)]


def planted_neighbourhood(pairs_sharing=(19,) * 4 + (17,) * 6 + (13,) * 6,
                          test_sharing: int = 14) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test on whitespace tokens with planted cosines: 40 unrelated dialogues, pairs that
    share 19 of their 20 words (4 copies, cosine ~0.94), 17 (6 pairs, ~0.82) and 13 (6, ~0.6); 30
    unrelated test rows and 4 that share `test_sharing` of a train dialogue's 20 words (14: cosine
    ~0.84 to it, 15: ~0.87; the test's close neighbours)."""
    train, test, word = [], [], 0

    def add(rows, tokens, prefix):
        rows.append((f"{prefix}{len(rows)}", " ".join(tokens), "s " + tokens[0], "t"))

    for _ in range(40):
        add(train, _words(word, 20), "r")
        word += 20
    for shared in pairs_sharing:  # the pair shares `shared` of its 20 words
        first = _words(word, 20)
        add(train, first, "r")
        add(train, first[:shared] + _words(word + 20, 20 - shared), "r")
        word += 40
    for _ in range(30):
        add(test, _words(word, 20), "x")
        word += 20
    for source in range(4):  # words of train row r<source>, and unseen ones (dropped: not in train)
        add(test, train[source][1].split()[:test_sharing] + _words(word, 20 - test_sharing), "x")
        word += 20 - test_sharing
    columns = ["fname", "dialogue", "summary", "topic"]
    return pd.DataFrame(train, columns=columns), pd.DataFrame(test, columns=columns)


def _hand_trial(vectors, test_vectors, rows, threshold, bins=20):
    """Everything calibrate_threshold does, the obvious slow way: dense cosines, clusters by
    union-find, each row's best cosine to the other folds, the binned ratio weights."""
    cosine = (vectors @ vectors.T).toarray()
    np.fill_diagonal(cosine, -1)
    parent = list(range(len(rows)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(cosine >= threshold, 1))):
        parent[root(i)] = root(j)
    clusters = np.array([root(i) for i in range(len(rows))])
    fold = assign_folds(rows, 3, 42, "length", clusters)["fold"].to_numpy()
    oof = np.where(fold[:, None] != fold[None, :], cosine, -1).max(axis=1)
    test = (test_vectors @ vectors.T).toarray().max(axis=1)
    oof_bins = np.minimum((oof * bins).astype(int), bins - 1)  # 20: 0.05-wide, the grid's step
    test_bins = np.minimum((test * bins).astype(int), bins - 1)
    oof_share = np.bincount(oof_bins, minlength=bins) / len(oof)
    test_share = np.bincount(test_bins, minlength=bins) / len(test)
    weights = np.array([min(test_share[b] / oof_share[b], 10.0) for b in oof_bins])
    return test_share[oof_share == 0].sum(), weights.sum() ** 2 / (weights ** 2).sum()


def test_auto_threshold_picks_what_a_hand_computation_picks(tmp_path):
    from competition.text.similarity import tfidf_vectors

    train, test = planted_neighbourhood()
    root = write_workspace(tmp_path, train, test, config='[metric]\ntokenizer = "whitespace"\n[cv]\nk = 3\n')
    config = load_config(root / "competition.toml")
    info = build_folds(config, train)
    grid = {trial["threshold"]: trial for trial in info["near_duplicates"]["grid"]}
    vectors, test_vectors = tfidf_vectors(list(train["dialogue"]), "whitespace", list(test["dialogue"]))
    by_hand = {threshold: _hand_trial(vectors, test_vectors, train, threshold) for threshold in grid}
    for threshold, (unmatched, ess) in by_hand.items():
        assert grid[threshold]["unmatched_test_share"] == pytest.approx(unmatched, abs=1e-6)
        assert grid[threshold]["ess"] == pytest.approx(ess, rel=1e-4)
    # The rule by hand: the largest ESS among thresholds leaving <= 2% unmatched, ties to the lower.
    fitting = [t for t, (unmatched, _) in by_hand.items() if unmatched <= 0.02]
    expected = max(fitting, key=lambda t: (round(by_hand[t][1], 6), -t))
    # Below 0.85 the ~0.82 pairs share a fold, so the test's 4 close rows (12%) have no CV row
    # like them; 0.85 and 0.9 make the same folds and the tie goes to the lower one.
    assert expected == 0.85 and info["near_duplicates"]["threshold"] == 0.85
    assert by_hand[0.8][0] == pytest.approx(4 / 34)
    stored = json.loads((root / "folds" / "folds.json").read_text(encoding="utf-8"))
    assert stored["near_duplicates"]["auto"] is True and stored["near_duplicates"]["threshold"] == 0.85
    # The 0.94 copies stay together whatever is chosen; folds are the same on a second build.
    fold = pd.read_csv(root / "folds" / "folds.csv").set_index("fname")["fold"]
    for pair in range(4):
        first, second = 40 + 2 * pair, 41 + 2 * pair
        assert fold[f"r{first}"] == fold[f"r{second}"]
    assert build_folds(config, train)["changed"] is False


def test_choose_threshold_weighs_unmatched_mass_before_ess():
    from competition.data.folds import ThresholdTrial, choose_threshold

    def trial(threshold, unmatched, ess):
        return ThresholdTrial(threshold, unmatched, ess, 0.5, 0.1, 1, 2)

    # "Least unmatched" alone would take 0.9; the largest ESS alone 0.5 (which leaves 11% unmatched).
    trials = [trial(0.5, 0.11, 12346), trial(0.7, 0.04, 12283), trial(0.8, 0.015, 12000), trial(0.9, 0.0, 11753)]
    assert choose_threshold(trials).threshold == 0.8
    assert choose_threshold([trial(0.5, 0.2, 100), trial(0.6, 0.1, 50)]).threshold == 0.6  # none fits: least unmatched


def test_auto_folds_are_checked_as_auto(tmp_path):
    train, test = planted_neighbourhood()
    root = write_workspace(tmp_path, train, test, config='[metric]\ntokenizer = "whitespace"\n[cv]\nk = 3\n')
    config = load_config(root / "competition.toml")
    build_folds(config, train)
    assert len(check_folds(config, train)) == len(train)
    config.cv.near_duplicates = 0.85  # the number auto chose, but asked for as a number: another setting
    with pytest.raises(FoldMismatch, match=r'near_duplicates = "auto" on whitespace tokens but .* near_duplicates = 0.85'):
        check_folds(config, train)


def _rule(by_hand: dict) -> float:
    """The auto rule by hand: the largest ESS among thresholds leaving <= 2% unmatched, ties to the lower."""
    fitting = [t for t, (unmatched, _) in by_hand.items() if unmatched <= 0.02]
    return max(fitting, key=lambda t: (round(by_hand[t][1], 6), -t))


def test_auto_compares_the_test_at_the_grids_resolution(tmp_path):
    """Test rows at ~0.87 and CV pairs at ~0.82 and ~0.88: at 0.85 the ~0.82 pairs split and fill
    [0.8, 0.9) with CV rows, so 10 bins would see every test row matched there, though no CV row is
    as close as the test's; in 0.05 bins [0.85, 0.9) is empty until 0.9 splits the ~0.88 pairs."""
    from competition.text.similarity import tfidf_vectors

    train, test = planted_neighbourhood((19,) * 4 + (17,) * 6 + (18,) * 6, test_sharing=15)
    root = write_workspace(tmp_path, train, test, config='[metric]\ntokenizer = "whitespace"\n[cv]\nk = 3\n')
    config = load_config(root / "competition.toml")
    info = build_folds(config, train)
    vectors, test_vectors = tfidf_vectors(list(train["dialogue"]), "whitespace", list(test["dialogue"]))
    grid = [trial["threshold"] for trial in info["near_duplicates"]["grid"]]
    coarse = {t: _hand_trial(vectors, test_vectors, train, t, bins=10) for t in grid}
    fine = {t: _hand_trial(vectors, test_vectors, train, t, bins=20) for t in grid}
    assert _rule(coarse) == 0.85 and coarse[0.85][0] == 0  # what 0.1-wide bins would choose
    assert fine[0.85][0] == pytest.approx(4 / 34)
    assert _rule(fine) == 0.9 == info["near_duplicates"]["threshold"]


def test_auto_reports_a_bad_strategy_or_k_as_such(tmp_path):
    """A mistake in k or the strategy's column is named before any threshold is tried, not read
    as "no threshold leaves enough clusters"."""
    train, test = planted_neighbourhood()
    root = write_workspace(tmp_path, train, test, config='[metric]\ntokenizer = "whitespace"\n[cv]\nk = 3\n')
    config = load_config(root / "competition.toml")
    with pytest.raises(ConfigError, match="no column 'level' in the data"):
        build_folds(config, train, strategy="stratify:level")
    with pytest.raises(ConfigError, match=r"k = 80 folds but only 72 labelled row\(s\): lower k"):
        build_folds(config, train, k=80)
