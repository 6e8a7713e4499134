"""competition.toml -> dataclasses: refusals that name the key, --config, the shipped default file,
seeds = [...] expanded into one candidate per seed and their MBR ensemble."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from competition.errors import ConfigError, UnknownCandidate
from competition.hashing import config_hash
from competition.text.metric import MetricConfig
from competition.workspace.config import CVConfig, DataConfig, SubmitConfig, build_dataclass, load_config, parse_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {"data": DataConfig, "metric": MetricConfig, "cv": CVConfig, "submit": SubmitConfig}


def write_config(folder: Path, text: str) -> Path:
    path = folder / "competition.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(folder: Path, text: str) -> str:
    path = write_config(folder, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(str(path.resolve()))
    return message


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config.path is None and config.root == tmp_path
    assert config.data == DataConfig() and config.metric.convention == "official"
    assert config.cv.k == 5 and config.submit.dir == "submissions"
    assert config.resolve("data") == tmp_path / "data"
    assert config.resolve("/abs/data") == Path("/abs/data")


def test_values_are_read_and_ints_widen_to_floats(tmp_path):
    path = write_config(tmp_path, '[data]\ndev = ""\n[metric]\nconvention = "rouge-score"\n[cv]\nk = 3\n'
                                  'bootstrap = 100\n[ensembles.vote]\nmethod = "best"\nweights = [1, 2.5]\n')
    config = load_config(path)
    assert config.data.dev == "" and config.metric.convention == "rouge-score"
    assert config.cv.k == 3 and config.cv.bootstrap == 100
    assert config.root == tmp_path.resolve()
    assert config.ensembles["vote"].method == "best"
    assert config.ensembles["vote"].weights == [1, 2.5]


def test_unknown_key_names_section_and_closest_key(tmp_path):
    message = config_error(tmp_path, '[data]\ntrian = "train.csv"\n')
    assert "[data] unknown key 'trian'; did you mean 'train'?" in message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    message = config_error(tmp_path, "[cv]\nzzzz = 1\n")
    assert "[cv] unknown key 'zzzz'; valid keys: folds_file, k, seed, strategy, include_dev, bootstrap" in message


def test_wrong_type(tmp_path):
    message = config_error(tmp_path, '[cv]\nk = "five"\ninclude_dev = 1\n')
    assert "[cv] k = 'five' should be int" in message
    assert "[cv] include_dev = 1 should be bool" in message


def test_a_wrong_type_in_a_candidate_table_is_a_config_error(tmp_path):
    message = config_error(tmp_path, '[candidates.remote]\nkind = "api"\nfew_shot = "3"\nmax_tokens = 1.5\n')
    assert "[candidates.remote] few_shot = '3' should be int" in message
    assert "[candidates.remote] max_tokens = 1.5 should be int" in message


@pytest.mark.parametrize("bug", [TypeError("'<' not supported"), ValueError("could not convert string to float")])
def test_a_bug_in_a_check_is_a_traceback_not_a_config_error(bug):
    @dataclasses.dataclass
    class Buggy:
        n: int = 1

        def __post_init__(self):
            raise bug

    problems: list[str] = []
    with pytest.raises(type(bug)):
        build_dataclass(Buggy, {"n": 2}, "section", problems)
    assert problems == []


def test_bool_is_not_an_int(tmp_path):
    assert "[cv] seed = True should be int" in config_error(tmp_path, "[cv]\nseed = true\n")


def test_unknown_section(tmp_path):
    message = config_error(tmp_path, '[metrik]\ntokenizer = "kiwi"\n')
    assert "unknown section [metrik]; did you mean [metric]?" in message


def test_section_that_is_not_a_table(tmp_path):
    assert "[data] should be a table" in config_error(tmp_path, 'data = "data/"\n')


def test_all_problems_reported_at_once(tmp_path):
    message = config_error(tmp_path, '[data]\ntrian = "x.csv"\n[cv]\nk = "five"\n[metrik]\n'
                                     '[ensembles.e]\nmetod = "mbr"\n')
    problems = message.split(": ", 1)[1].split("; ")
    assert any("unknown key 'trian'" in p for p in problems)
    assert any("k = 'five' should be int" in p for p in problems)
    assert any("unknown section [metrik]" in p for p in problems)
    assert any("[ensembles.e] unknown key 'metod'" in p for p in problems)


def test_candidate_needs_a_known_kind(tmp_path):
    message = config_error(tmp_path, '[candidates.a]\nenabled = true\n[candidates.b]\nkind = "magic"\n')
    assert "[candidates.a] needs kind" in message
    assert "[candidates.b] unknown candidate kind 'magic'" in message


def test_invalid_toml(tmp_path):
    assert "not valid TOML" in config_error(tmp_path, "[data\n")


def test_missing_explicit_config(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_config_option_overrides_the_workspace_file(cli, korean_workspace, tmp_path_factory):
    # The workspace file points at a folder that is not there; --config names one that is.
    write_config(korean_workspace, '[data]\ndir = "missing"\n')
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    other = elsewhere / "other.toml"
    other.write_text(f'[data]\ndir = "{korean_workspace / "data"}"\n', encoding="utf-8")
    failing = cli(["data", "check", "--no-tokens"], cwd=korean_workspace)
    assert failing.exit_code == 2 and "missing" in failing.output
    result = cli(["data", "check", "--no-tokens", "--json", "--config", other], cwd=korean_workspace)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"]["train"] == 12
    # A relative dir is resolved against the folder of the file given with --config.
    (elsewhere / "rel.toml").write_text('[data]\ndir = "files"\n', encoding="utf-8")
    relative = cli(["data", "check", "--no-tokens", "--config", elsewhere / "rel.toml"], cwd=korean_workspace)
    assert relative.exit_code == 2 and str(elsewhere / "files") in relative.output
    # The default data/ folder, absent there: the bundled sample, said in one line naming that folder.
    (elsewhere / "default.toml").write_text('[data]\ndir = "data"\n', encoding="utf-8")
    sample = cli(["data", "check", "--no-tokens", "--config", elsewhere / "default.toml"], cwd=korean_workspace)
    assert sample.exit_code == 0 and f"note: no {elsewhere / 'data'}/ folder: using the bundled sample" in sample.stderr


def test_config_errors_reach_the_cli_as_one_line(cli, tmp_path):
    write_config(tmp_path, '[metric]\nconvnetion = "official"\n')
    result = cli(["data", "check"], cwd=tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "did you mean 'convention'?" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_config_hash_is_stable_and_sensitive():
    assert config_hash(CVConfig()) == config_hash(CVConfig())
    assert config_hash(CVConfig()) != config_hash(CVConfig(k=4))
    assert config_hash({"b": 1, "a": 2}) == config_hash({"a": 2, "b": 1})


def section_lines(text: str, section: str) -> list[str]:
    """The lines of one [section] of a TOML text."""
    lines, inside = [], False
    for line in text.splitlines():
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            inside = header.group(1).strip() == section
            continue
        if inside:
            lines.append(line)
    return lines


def test_default_competition_toml_documents_every_field():
    path = REPO_ROOT / "competition.toml"
    assert path.is_file(), "the repository ships a documented competition.toml"
    config = load_config(path)
    assert config.path == path.resolve()
    text = path.read_text(encoding="utf-8")
    for section, cls in SECTIONS.items():
        lines = section_lines(text, section)
        assert lines, f"[{section}] is missing from competition.toml"
        for field in dataclasses.fields(cls):
            pattern = re.compile(rf"^\s*#?\s*{field.name}\s*=")
            positions = [i for i, line in enumerate(lines) if pattern.match(line)]
            assert positions, f"[{section}] {field.name} is not in competition.toml"
            line = lines[positions[0]]
            before = lines[positions[0] - 1].strip() if positions[0] else ""
            commented = re.search(r"=.*#\s*\S", line) or before.startswith("#")
            assert commented, f"[{section}] {field.name} has no comment in competition.toml"


def test_default_competition_toml_parses_from_its_folder(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    config = load_config()
    assert config.path == (REPO_ROOT / "competition.toml").resolve()
    assert config.metric.tokenizer in ("kiwi", "whitespace", "english")


# -- malformed sections and bad values: one line naming the section/key and what to do ------------

@pytest.mark.parametrize("text, expected", [
    ("candidates = 3\n", "candidates = 3 is not a table: define each one as its own [candidates.NAME] section"),
    ("ensembles = 3\n", "ensembles = 3 is not a table: define each one as its own [ensembles.NAME] section"),
    ('candidates = ["lead"]\n', "candidates = ['lead'] is not a table"),
    ("[ensembles]\ne = 3\n", "[ensembles] e = 3 is not a table: make it a section [ensembles.e]"),
    ('[candidates]\na = "lead"\n', "[candidates] a = 'lead' is not a table: make it a section [candidates.a]"),
    ('[ensembles.e]\nname = "other"\n', "[ensembles.e] unknown key 'name'"),
], ids=["candidates-int", "ensembles-int", "candidates-list", "ensemble-int", "candidate-str", "ensemble-name"])
def test_malformed_candidate_and_ensemble_sections(tmp_path, text, expected):
    assert expected in config_error(tmp_path, text)


def test_malformed_sections_reach_the_cli_as_one_line(cli, tmp_path):
    write_config(tmp_path, "candidates = 3\n[ensembles]\ne = 3\n")
    result = cli(["data", "check"], cwd=tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "candidates = 3 is not a table" in result.output and "[ensembles.e]" in result.output


@pytest.mark.parametrize("strategy", ["bogus", "length:topic", "group:", "stratify", "random:x"])
def test_bad_fold_strategy_is_refused_at_load(tmp_path, strategy):
    from competition.choices import STRATEGIES

    message = config_error(tmp_path, f'[cv]\nstrategy = "{strategy}"\n')
    assert f"[cv] strategy = {strategy!r}: choose " in message
    assert all(choice in message for choice in STRATEGIES)


@pytest.mark.parametrize("strategy", ["length", "random", "group:topic", "stratify:topic"])
def test_valid_fold_strategies_load(tmp_path, strategy):
    assert load_config(write_config(tmp_path, f'[cv]\nstrategy = "{strategy}"\n')).cv.strategy == strategy


def test_bad_metric_values_name_key_and_every_choice_from_the_registries(tmp_path):
    from competition.text.metric import CONVENTIONS, MULTI_REF_RULES
    from competition.text.tokenizers import TOKENIZERS

    message = config_error(tmp_path, '[metric]\ntokenizer = "mecab"\nconvention = "google"\nmulti_ref = "min"\n'
                                     '[cv]\ntest_strategy = "vote"\nstrategy = "bogus"\n')
    problems = message.split(": ", 1)[1].split("; ")
    tokenizer = next(p for p in problems if p.startswith("[metric] tokenizer = 'mecab': choose "))
    assert all(name in tokenizer for name in TOKENIZERS)
    convention = next(p for p in problems if p.startswith("[metric] convention = 'google': choose "))
    assert all(name in convention for name in CONVENTIONS)
    multi_ref = next(p for p in problems if p.startswith("[metric] multi_ref = 'min': choose "))
    assert all(name in multi_ref for name in MULTI_REF_RULES)
    # Every bad value of a section is reported, not just the first.
    assert any(p.startswith("[cv] strategy = 'bogus'") for p in problems)
    assert any(p.startswith("[cv] test_strategy = 'vote': choose mbr or refit") for p in problems)


def test_every_registered_metric_choice_loads(tmp_path):
    from competition.text.metric import CONVENTIONS, MULTI_REF_RULES
    from competition.text.tokenizers import TOKENIZERS

    for tokenizer in TOKENIZERS:
        for convention in CONVENTIONS:
            for multi_ref in MULTI_REF_RULES:
                text = f'[metric]\ntokenizer = "{tokenizer}"\nconvention = "{convention}"\nmulti_ref = "{multi_ref}"\n'
                metric = load_config(write_config(tmp_path, text)).metric
                assert (metric.tokenizer, metric.convention, metric.multi_ref) == (tokenizer, convention, multi_ref)


def test_bad_ensemble_values_are_all_reported(tmp_path):
    message = config_error(tmp_path, '[ensembles.e]\nmethod = "vote"\nutility = "bleu"\n')
    assert "[ensembles.e] method = 'vote': choose best, mbr or hill-climb" in message
    assert "[ensembles.e] utility = 'bleu': choose final, rouge1, rouge2 or rougeL" in message


def test_bad_metric_value_reaches_the_cli_as_one_line(cli, tmp_path):
    write_config(tmp_path, '[metric]\ntokenizer = "mecab"\n')
    result = cli(["data", "check"], cwd=tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "[metric] tokenizer = 'mecab': choose english, kiwi or whitespace" in result.output


def test_cv_values_are_checked_at_load_for_every_command(tmp_path, cli):
    """Every bad [cv] value is named at load, and every command stops there (exit 2) before
    building folds, running or scoring."""
    message = config_error(tmp_path, "[cv]\nk = -3\nbootstrap = -5\nnear_duplicates = 1.5\npick_by = \"public\"\n")
    assert "[cv] k = -3: use at least 2 folds" in message
    assert "[cv] bootstrap = -5: use at least 100 resamples, or 0 for no intervals" in message
    assert "[cv] near_duplicates = 1.5: choose \"auto\", a cosine in (0, 1], or 0 for off" in message
    assert "[cv] pick_by = 'public': choose test_matched or oof" in message
    assert "bootstrap = 50" in config_error(tmp_path, "[cv]\nbootstrap = 50\n")
    (tmp_path / "competition.toml").write_text("[cv]\nk = 1\n", encoding="utf-8")
    for command in (["run"], ["cv"], ["pipeline"], ["folds", "build"]):
        result = cli(command, cwd=tmp_path)
        assert result.exit_code == 2 and "[cv] k = 1: use at least 2 folds" in result.output, command
    (tmp_path / "competition.toml").write_text("[cv]\nbootstrap = 0\n", encoding="utf-8")
    assert load_config(tmp_path / "competition.toml").cv.bootstrap == 0


def test_candidate_seed_is_a_whole_number(tmp_path):
    message = config_error(tmp_path, '[candidates.a]\nkind = "lead"\nseed = -1\n[candidates.b]\nkind = "lead"\n'
                                     'seed = "x"\n')
    assert "[candidates.a] seed = -1 should be a whole number >= 0" in message
    assert "[candidates.b] seed = 'x' should be a whole number >= 0" in message
    (tmp_path / "competition.toml").write_text('[cv]\nseed = 5\n[candidates.a]\nkind = "lead"\n'
                                               '[candidates.b]\nkind = "lead"\nseed = 9\n', encoding="utf-8")
    from competition.results.provenance import candidate_hash, candidate_seed

    config = load_config(tmp_path / "competition.toml")
    assert candidate_seed(config, "a") == 5 and candidate_seed(config, "b") == 9
    assert candidate_hash(config, "a")[0] != candidate_hash(config, "b")[0]  # the seed is part of the hash


# -- seeds = [13, 42, 77]: one candidate NAME#sSEED per seed, NAME their MBR ---------------------
def test_seeds_expand_into_one_candidate_per_seed_and_an_mbr_ensemble():
    config = parse_config({"candidates": {"lead": {"kind": "lead", "seeds": [13, 42, 77], "turns": 2}}})
    members = ["lead#s13", "lead#s42", "lead#s77"]
    assert list(config.candidates) == members and config.seed_groups == {"lead": members}
    assert [config.candidates[m].seed for m in members] == [13, 42, 77]
    assert all(config.candidates[m].params.turns == 2 and not config.candidates[m].seeds for m in members)
    ensemble = config.ensembles["lead"]
    assert (ensemble.members, ensemble.method) == (members, "mbr")


def test_a_seed_group_named_where_one_model_is_needed_says_to_name_a_seed():
    """`competition tune NAME` / `export NAME` on a candidate with seeds = [...]: NAME is their MBR,
    so the refusal names the seed sources, not "add a [candidates.NAME] section" (it is there)."""
    config = parse_config({"candidates": {"smol": {"kind": "lead", "seeds": [1, 2]}}})
    with pytest.raises(UnknownCandidate) as error:
        config.candidate("smol")
    message = str(error.value)
    assert "add a [candidates.smol] section" not in message
    assert "'smol' has seeds = [...]" in message and "smol#s1, smol#s2" in message and "e.g. 'smol#s1'" in message
    assert config.candidate("smol#s2").seed == 2


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

