"""`competition data check`: every refusal through the CLI, the normalisation real files need,
DialogSum JSONL, and the printed summary."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from competition.data.loading import load_data, normalise_text, read_split, references, rows_sha256
from competition.errors import DataError
from conftest import write_workspace


@pytest.fixture
def workspace(tmp_path, korean_rows) -> Path:
    """train = 8 fixture rows, dev = 2, test = 2 (no dialogue shared between splits)."""
    return write_workspace(tmp_path, korean_rows.head(8), korean_rows.tail(2), korean_rows.iloc[8:10])


def refused(cli, workspace: Path, *extra: str) -> str:
    """Run data check on a bad workspace: exit code 2, one line, no traceback; the message."""
    result = cli(["data", "check", "--data", workspace / "data", "--no-tokens", *extra], cwd=workspace)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))


# -- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["train.csv", "dev.csv", "test.csv", "sample_submission.csv"])
def test_missing_file(cli, workspace, name):
    (workspace / "data" / name).unlink()
    message = refused(cli, workspace)
    assert f"{name} not found" in message and "--data" in message


def test_missing_data_folder(cli, workspace):
    result = cli(["data", "check", "--data", workspace / "nowhere"], cwd=workspace)
    assert result.exit_code == 2 and "data folder" in result.output and "nowhere" in result.output


def test_missing_column(cli, workspace, korean_rows):
    korean_rows.head(8).drop(columns=["dialogue"]).to_csv(workspace / "data" / "train.csv", index=False)
    message = refused(cli, workspace)
    assert "train.csv: missing column 'dialogue'" in message
    assert "has fname, summary, topic" in message


def test_missing_summary_column_in_dev(cli, workspace, korean_rows):
    korean_rows.iloc[8:10].drop(columns=["summary"]).to_csv(workspace / "data" / "dev.csv", index=False)
    message = refused(cli, workspace)
    assert "dev.csv: missing column 'summary'" in message


def test_empty_fname(cli, workspace):
    write_text(workspace / "data" / "train.csv",
               "fname,dialogue,summary,topic\nf_0,안녕,인사,a\n  ,안녕하세요,인사,a\n")
    message = refused(cli, workspace)
    assert "train.csv row 2: empty fname" in message


def test_duplicate_fname(cli, workspace, korean_rows):
    rows = korean_rows.head(8).copy()
    rows.loc[5, "fname"] = "f_1"
    rows.to_csv(workspace / "data" / "train.csv", index=False)
    message = refused(cli, workspace)
    assert "train.csv: fname 'f_1' appears more than once (rows 2, 6)" in message


def test_empty_dialogue(cli, workspace, korean_rows):
    rows = korean_rows.tail(2).copy()
    rows.loc[rows.index[1], "dialogue"] = " \x08 "
    rows[["fname", "dialogue"]].to_csv(workspace / "data" / "test.csv", index=False)
    message = refused(cli, workspace)
    assert "test.csv row 2 (fname f_11): empty dialogue (1 such row(s))" in message


@pytest.mark.parametrize("split, position", [("train", 3), ("dev", 1)])
def test_missing_summary(cli, workspace, korean_rows, split, position):
    rows = korean_rows.head(8).copy() if split == "train" else korean_rows.iloc[8:10].copy()
    fname = rows["fname"].iloc[position]
    rows.loc[rows.index[position], "summary"] = ""
    rows.to_csv(workspace / "data" / f"{split}.csv", index=False)
    message = refused(cli, workspace)
    assert f"{split}.csv row {position + 1} (fname {fname}): missing summary" in message


def test_test_ids_differ_from_sample_submission_set(cli, workspace):
    sample = pd.read_csv(workspace / "data" / "sample_submission.csv", dtype=str, keep_default_na=False)
    sample.loc[1, "fname"] = "test_999"
    sample.to_csv(workspace / "data" / "sample_submission.csv", index=False)
    message = refused(cli, workspace)
    assert "test ids differ from sample_submission ids" in message
    assert "1 id(s) only in" in message and "test.csv (e.g. f_11)" in message
    assert "sample_submission.csv (e.g. test_999)" in message


def test_test_ids_differ_from_sample_submission_order(cli, workspace):
    sample = pd.read_csv(workspace / "data" / "sample_submission.csv", dtype=str, keep_default_na=False)
    sample.iloc[::-1].to_csv(workspace / "data" / "sample_submission.csv", index=False)
    message = refused(cli, workspace)
    assert "different order" in message
    assert "row 1 is f_10 in" in message and "but f_11 in" in message


def test_non_utf8_bytes(cli, workspace, korean_rows):
    path = workspace / "data" / "dev.csv"
    korean_rows.iloc[8:10].to_csv(path, index=False)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2] + "은행".encode("cp949")  # a Korean file saved in the legacy encoding
    path.write_bytes(b"\n".join(lines))
    message = refused(cli, workspace)
    assert "dev.csv line 3" in message and "is not UTF-8" in message and "re-save" in message


def test_unreadable_jsonl_line(cli, workspace):
    write_text(workspace / "data" / "train.jsonl",
               '{"fname": "a", "dialogue": "안녕", "summary": "인사"}\n{"fname": "b", "dialogue": \n')
    workspace.joinpath("competition.toml").write_text('[data]\ntrain = "train.jsonl"\n', encoding="utf-8")
    message = refused(cli, workspace)
    assert "train.jsonl line 2: not a JSON object" in message


def test_config_file_points_at_data(cli, workspace):
    # The workspace's competition.toml names a train file that is not there.
    workspace.joinpath("competition.toml").write_text('[data]\ntrain = "train_v2.csv"\n', encoding="utf-8")
    result = cli(["data", "check", "--no-tokens"], cwd=workspace)
    assert result.exit_code == 2 and "train_v2.csv not found" in result.output


# -- normalisation -------------------------------------------------------------------------------
def test_normalise_text():
    assert normalise_text("  #Person1#: 안녕\x08하세요 \r\n #Person2#: 네.\r\n") == "#Person1#: 안녕하세요\n#Person2#: 네."
    assert normalise_text("a\rb\x00\x1f\x7f") == "a\nb"
    assert normalise_text("탭\t유지") == "탭\t유지"


def test_real_file_quirks_are_normalised(cli, workspace):
    data = workspace / "data"
    # BOM, CRLF line ends and CRLF inside quoted dialogues, stray spaces, a \x08, an index column.
    (data / "train.csv").write_bytes(
        b"\xef\xbb\xbf" + "fname,dialogue,summary,topic\r\n"
        " f_0 ,\"#Person1#: 안녕하세요. \r\n#Person2#: 네,\x08 안녕하세요.\",  인사를 나눕니다. ,인사\r\n"
        "f_1,\"#Person1#: 전화번호는 #PhoneNumber#예요.\r\n#Person2#: 고마워요.\",전화번호를 알려 줍니다.,전화\r\n"
        .encode("utf-8"))
    (data / "test.csv").write_bytes("fname,dialogue\r\nt_0,#Person1#: 배고파요.\r\nt_1,#Person1#: 추워요.\r\n"
                                    .encode("utf-8"))
    (data / "sample_submission.csv").write_text(",fname,summary\n0,t_0,\n1,t_1,\n", encoding="utf-8")
    (data / "dev.csv").unlink()
    workspace.joinpath("competition.toml").write_text('[data]\ndev = ""\n', encoding="utf-8")

    loaded = load_data(data, dev="")
    assert loaded.dev is None
    assert list(loaded.train.columns) == ["fname", "dialogue", "summary", "topic"]
    assert list(loaded.train["fname"]) == ["f_0", "f_1"]
    assert loaded.train["dialogue"][0] == "#Person1#: 안녕하세요.\n#Person2#: 네, 안녕하세요."
    assert loaded.train["summary"][0] == "인사를 나눕니다."
    assert list(loaded.sample_submission.columns) == ["fname", "summary"]
    assert list(loaded.sample_submission["fname"]) == ["t_0", "t_1"]
    assert list(loaded.test["topic"]) == ["", ""]  # filled so every split has the same columns

    result = cli(["data", "check", "--data", data, "--no-tokens"], cwd=workspace)
    assert result.exit_code == 0, result.output
    assert "train 2 rows" in result.output and "test 2 rows" in result.output


def test_dialogsum_jsonl_and_multi_reference(tmp_path, korean_rows):
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "train.jsonl", "w", encoding="utf-8") as handle:
        for row in korean_rows.head(6).to_dict("records"):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.write("\n")  # a trailing blank line is not a row
    with open(data / "dev.jsonl", "w", encoding="utf-8") as handle:
        for position, row in enumerate(korean_rows.iloc[6:9].to_dict("records")):
            record = {"fname": row["fname"], "dialogue": row["dialogue"], "topic": row["topic"],
                      "summary1": row["summary"], "summary2": "두 번째 요약입니다.",
                      "summary3": "세 번째 요약입니다."}
            if position == 1:
                del record["summary3"]  # fewer references on this row
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    korean_rows.tail(3)[["fname", "dialogue"]].to_csv(data / "test.csv", index=False)
    pd.DataFrame({"fname": korean_rows.tail(3)["fname"], "summary": ""}).to_csv(
        data / "sample_submission.csv", index=False)

    loaded = load_data(data, train="train.jsonl", dev="dev.jsonl")
    assert len(loaded.train) == 6 and loaded.train["summary"].tolist() == korean_rows.head(6)["summary"].tolist()
    refs = references(loaded.dev)
    assert [len(r) for r in refs] == [3, 2, 3]
    assert refs[0] == [korean_rows["summary"][6], "두 번째 요약입니다.", "세 번째 요약입니다."]
    assert loaded.dev["summary"].tolist() == korean_rows.iloc[6:9]["summary"].tolist()
    assert read_split(data / "dev.jsonl", "references")["fname"].tolist() == ["f_6", "f_7", "f_8"]


def test_rows_sha256_ignores_order_but_not_content(korean_rows):
    assert rows_sha256(korean_rows) == rows_sha256(korean_rows.iloc[::-1])
    changed = korean_rows.copy()
    changed.loc[0, "summary"] = "다른 요약"
    assert rows_sha256(changed) != rows_sha256(korean_rows)


def test_rows_sha256_remembered_is_the_digest_of_the_rows(korean_rows, monkeypatch):
    """The in-process memo answers only frames with the same rows: a one-character edit, a column's
    dtype or another column set is hashed again, and every answer equals the digest computed afresh."""
    from competition.data import loading as data

    first = rows_sha256(korean_rows)
    edited = korean_rows.copy()
    edited.loc[3, "dialogue"] = edited.loc[3, "dialogue"][:-1] + "!"
    calls = []
    real = data._rows_sha256
    monkeypatch.setattr(data, "_rows_sha256", lambda ordered: calls.append(len(ordered)) or real(ordered))
    assert rows_sha256(korean_rows.iloc[::-1]) == first and calls == []  # remembered
    assert rows_sha256(edited) != first and calls == [len(korean_rows)]
    assert rows_sha256(edited) == real(edited.sort_values("fname")[["fname", "dialogue", "summary"]])
    assert rows_sha256(korean_rows[["fname", "dialogue"]]) == real(korean_rows.sort_values("fname")[["fname", "dialogue"]])


def test_rows_sha256_is_kept_in_the_workspace_cache(korean_rows, tmp_path, monkeypatch):
    """Another command (a new process: the in-process memo empty) reads the fingerprint from the
    workspace's token cache instead of hashing every row again; edited rows are hashed afresh."""
    from competition.data import loading as data
    from competition.text import token_cache

    data._fingerprints.clear()  # earlier tests fingerprinted these rows without a workspace
    with token_cache.workspace(tmp_path / "runs", 64):
        digest = rows_sha256(korean_rows)
        data._fingerprints.clear()
        real = data._rows_sha256
        calls = []
        monkeypatch.setattr(data, "_rows_sha256", lambda ordered: calls.append(len(ordered)) or real(ordered))
        assert rows_sha256(korean_rows) == digest and calls == []
        edited = korean_rows.assign(summary=korean_rows["summary"] + ".")
        assert rows_sha256(edited) != digest and calls == [len(korean_rows)]
    assert (tmp_path / "runs" / ".cache" / "tokens.sqlite").exists()


def test_a_second_load_is_a_copy_and_an_edited_file_is_read_again(workspace):
    """load_data remembers the files it read: callers get frames of their own, and a file edited in
    place (same size) is read again, not answered from memory."""
    data_dir = workspace / "data"
    for _ in range(2):  # read from the files, then remembered
        loaded = load_data(data_dir)
        loaded.train.loc[0, "summary"] = "바뀐 요약"  # a caller changing its frame in place
    second = load_data(data_dir)
    assert second.train.loc[0, "summary"] != "바뀐 요약"
    text = (data_dir / "train.csv").read_text(encoding="utf-8")
    old = second.train.loc[0, "summary"]
    new = old[:-1] + ("가" if old[-1] != "가" else "나")
    (data_dir / "train.csv").write_text(text.replace(old, new, 1), encoding="utf-8")
    assert load_data(data_dir).train.loc[0, "summary"] == new


# -- summary ------------------------------------------------------------------------------------
def test_summary_json(cli, korean_workspace, korean_rows):
    result = cli(["data", "check", "--data", korean_workspace / "data", "--json"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows"] == {"train": 12, "dev": 4, "test": 4, "sample_submission": 4}
    train = summary["lengths"]["train"]
    assert train["dialogue_chars"]["max"] == max(len(d) for d in korean_rows["dialogue"])
    assert train["summary_chars"]["max"] == max(len(s) for s in korean_rows["summary"])
    assert 0 < train["dialogue_tokens"]["median"] <= train["dialogue_tokens"]["p95"] <= train["dialogue_tokens"]["max"]
    assert train["dialogue_tokens"]["median"] > train["summary_tokens"]["median"]
    assert "summary_chars" not in summary["lengths"]["test"]
    # #PhoneNumber# is in f_8 (train, and test as test_f_8); #Address# only in f_4 (train).
    assert summary["tags"]["#PhoneNumber#"] == 2 and summary["tags"]["#Address#"] == 1
    assert summary["tags"]["#Person1#"] > summary["tags"]["#PhoneNumber#"]
    # dev = first 4 and test = last 4 train dialogues, renamed: the leakage check finds them.
    assert summary["overlap"] == {"train/dev": 4, "train/test": 4, "dev/test": 0}


def test_summary_table(cli, korean_workspace):
    result = cli(["data", "check", "--data", korean_workspace / "data"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    output = result.output
    assert "Data OK: train 12 rows, dev 4 rows, test 4 rows, sample_submission 4 rows" in output
    assert "dialogue_tokens" in output and "summary_chars" in output
    assert "#PhoneNumber# 2" in output and "#Address# 1" in output
    assert "train/dev 4, train/test 4, dev/test 0" in output


def test_no_tokens_skips_morpheme_counts(cli, korean_workspace):
    result = cli(["data", "check", "--json", "--no-tokens"], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    lengths = json.loads(result.output)["lengths"]["train"]
    assert "dialogue_chars" in lengths and "dialogue_tokens" not in lengths


def test_library_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_split(tmp_path / "train.csv", "train")


@pytest.mark.parametrize("name", ["train.csv", "dev.csv", "test.csv"])
def test_a_header_only_file_is_refused(cli, workspace, name):
    """A file with a header and no rows is refused by name (dev.csv: with how to turn dev off), by
    `data check` and by the pipeline alike."""
    path = workspace / "data" / name
    write_text(path, path.read_text(encoding="utf-8").splitlines()[0] + "\n")
    message = refused(cli, workspace)
    assert f"{name}: only a header, no rows" in message
    assert ('dev = ""' in message) == (name == "dev.csv")
    result = cli(["pipeline"], cwd=workspace)
    assert result.exit_code == 2 and f"{name}: only a header, no rows" in result.output


def test_not_found_messages_fit_the_file(cli, workspace, korean_rows):
    """A missing dev.csv says dev can be turned off ([data] dev = ""); a missing predictions CSV
    given to `score` says to check its path, not [data]."""
    (workspace / "data" / "dev.csv").unlink()
    assert 'set dev = "" in [data]' in refused(cli, workspace)
    result = cli(["score", workspace / "preds.csv", "--refs", workspace / "data" / "train.csv"], cwd=workspace)
    assert result.exit_code == 2 and "preds.csv not found: check the path of the predictions file" in result.output
    assert "[data]" not in result.output
