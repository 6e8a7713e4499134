"""`competition.toml` -> dataclasses. Every field has a default; problems are all reported at once.

Sections: [data], [metric], [cv], [submit], [tracking], [leaderboard], [candidates.NAME] (kind + that
kind's parameters, whose dataclass lives in the kind's module), [ensembles.NAME].
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..candidates import kind_names, params_class
from ..choices import ENSEMBLE_METHODS, LEADERBOARD_BACKENDS, PICK_BY, STRATEGIES, listed, parse_strategy
from ..errors import ConfigError, InvalidValues, UnknownCandidate, raise_if_invalid
from ..text.mbr import UTILITIES
from ..text.metric import MetricConfig

DEFAULT_CONFIG = "competition.toml"
# A Kaggle competition slug: lower-case letters, digits and hyphens.
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")
_SLUG_CHARS = re.compile(r"[^a-z0-9]+")


@dataclass
class DataConfig:
    dir: str = "data"  # folder with the competition files, relative to the workspace
    train: str = "train.csv"  # fname,dialogue,summary,topic (.csv or DialogSum .jsonl)
    dev: str = "dev.csv"  # same columns; "" when there is no dev file
    test: str = "test.csv"  # fname,dialogue
    sample_submission: str = "sample_submission.csv"  # fname,summary in leaderboard order


@dataclass
class CVConfig:
    folds_file: str = "folds/folds.csv"  # fname,fold; folds.json is written beside it
    k: int = 5  # number of folds
    seed: int = 42  # shuffling seed
    strategy: str = "length"  # length | random | group:COLUMN | stratify:COLUMN
    include_dev: bool = False  # put dev rows into the folds too (then dev is no hold-out)
    bootstrap: int = 1000  # resamples for the 95% intervals (at least 100; 0 = no intervals)
    test_strategy: str = "mbr"  # test/dev output: mbr (per row, the fold output closest to the others) or refit
    near_duplicates: float | str = "auto"  # dialogues with TF-IDF cosine >= this share a fold; "auto" = calibrated to the test; 0 = off
    pick_by: str = "test_matched"  # the CV that ranks, warns, plots, picks (cv, history, submit): test_matched or oof
    objective: str = "test_matched"  # what ensembles, tune and lead's N maximise: test_matched (rows weighted as in cv) or oof

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 2:
            problems.append(f"k = {self.k!r}: use at least 2 folds")
        if not isinstance(self.bootstrap, int) or isinstance(self.bootstrap, bool) or \
                not (self.bootstrap == 0 or self.bootstrap >= 100):
            problems.append(f"bootstrap = {self.bootstrap!r}: use at least 100 resamples, or 0 for no intervals")
        if isinstance(self.near_duplicates, str) and self.near_duplicates != "auto" or \
                not isinstance(self.near_duplicates, str) and not 0 <= self.near_duplicates <= 1:
            problems.append(f"near_duplicates = {self.near_duplicates!r}: choose \"auto\", a cosine in (0, 1], or 0 "
                            f"for off")
        if self.pick_by not in PICK_BY:
            problems.append(f"pick_by = {self.pick_by!r}: choose {listed(PICK_BY)}")
        if self.objective not in PICK_BY:
            problems.append(f"objective = {self.objective!r}: choose {listed(PICK_BY)}")
        try:
            parse_strategy(self.strategy)
        except ConfigError:
            problems.append(f"strategy = {self.strategy!r}: choose {listed(STRATEGIES)} (e.g. group:topic)")
        if self.test_strategy not in ("mbr", "refit"):
            problems.append(f"test_strategy = {self.test_strategy!r}: choose mbr or refit")
        raise_if_invalid(problems)


@dataclass
class SubmitConfig:
    dir: str = "submissions"  # leaderboard CSVs and log.csv (tracked in git)
    source: str = ""  # candidate or ensemble to submit; "" = the best complete source by [cv] pick_by


@dataclass
class TrackingConfig:
    mlflow: str = ""  # MLflow tracking URI, e.g. "sqlite:///mlruns.db" (a file in the workspace); "" = off
    experiment: str = ""  # MLflow experiment of this workspace; "" = the workspace folder's name

    def __post_init__(self) -> None:
        # A bare path would make MLflow create a file store (a folder) under that name.
        if self.mlflow and "://" not in self.mlflow and self.mlflow != "databricks":
            raise InvalidValues([f"mlflow = {self.mlflow!r}: give a tracking URI such as \"sqlite:///mlruns.db\" "
                                 f"(a file in the workspace) or \"http://host:5000\", or \"\" for off"])


@dataclass
class LeaderboardConfig:
    backend: str = "manual"  # manual (scores typed in: `lb record`) or kaggle (upload and `lb sync` via Kaggle's API)
    competition: str = ""  # kaggle: the competition's slug, as in kaggle.com/competitions/SLUG
    score_scale: float = 1.0  # the platform's score x this = the log's 0-100 score (100 when the platform shows 0-1)
    wait_s: float = 900.0  # --wait: stop polling for the score after this many seconds (`lb sync` fetches it later)
    poll_s: float = 10.0  # --wait: first pause between polls, doubled after each poll up to poll_max_s
    poll_max_s: float = 60.0  # --wait: longest pause between polls
    tries: int = 4  # network errors and timeouts: attempts per request, 2, 4, 8 ... s apart, then stop

    def __post_init__(self) -> None:
        problems = []
        if self.backend not in LEADERBOARD_BACKENDS:
            problems.append(f"backend = {self.backend!r}: choose {listed(LEADERBOARD_BACKENDS)}")
        if self.backend == "kaggle" and not self.competition:
            problems.append('backend = "kaggle" needs competition = "SLUG" (the name in kaggle.com/competitions/SLUG)')
        slug = self.competition.rstrip("/").rpartition("/")[2]
        if self.competition and (slug != self.competition or not _SLUG.fullmatch(self.competition)):
            problems.append(f"competition = {self.competition!r}: give the slug alone, lower case, e.g. "
                            f"{_SLUG_CHARS.sub('-', slug.lower()).strip('-') or 'titanic'!r}")
        if self.score_scale <= 0:
            problems.append(f"score_scale = {self.score_scale!r}: use 1 (the platform shows 0-100) or 100 (0-1)")
        for key in ("wait_s", "poll_s", "poll_max_s"):
            if getattr(self, key) <= 0:
                problems.append(f"{key} = {getattr(self, key)!r}: use a number of seconds above 0")
        if self.poll_max_s < self.poll_s:
            problems.append(f"poll_max_s = {self.poll_max_s!r} is below poll_s = {self.poll_s!r}: raise it")
        if not isinstance(self.tries, int) or isinstance(self.tries, bool) or self.tries < 1:
            problems.append(f"tries = {self.tries!r}: use 1 or more attempts")
        raise_if_invalid(problems)


@dataclass
class CandidateConfig:
    name: str
    kind: str  # one of the kinds below (or a registered kind): its keys are listed with it
    enabled: bool = True  # false: kept in the file, skipped by `run` and `make submit`
    params: Any = None  # the kind's own dataclass
    augmentations: list[str] = field(default_factory=list)  # augmented CSVs added fold-safely to training
    seed: int | None = None  # this candidate's seed (weights init, data order, sampling); None = [cv] seed
    seeds: list[int] = field(default_factory=list)  # several seeds: a source NAME#sSEED each, NAME = their MBR


def seed_source(name: str, seed: int) -> str:
    """The source one seed of a candidate with `seeds = [...]` runs as."""
    return f"{name}#s{seed}"


@dataclass
class EnsembleConfig:
    name: str
    members: list[str] = field(default_factory=lambda: ["*"])  # candidate names, or "*" for all
    method: str = "mbr"  # best | mbr | hill-climb
    utility: str = "final"  # MBR utility: final, rouge1, rouge2 or rougeL
    weights: list[float] = field(default_factory=list)  # per member; empty = uniform ("oof" below)
    weights_from_oof: bool = False  # weight members by their OOF final
    max_members: int = 8  # hill-climb: most picks (with repetition)
    enabled: bool = True  # false: skipped by `make submit`

    def __post_init__(self) -> None:
        problems = []
        if self.method not in ENSEMBLE_METHODS:
            problems.append(f"method = {self.method!r}: choose {listed(ENSEMBLE_METHODS)}")
        if self.utility not in UTILITIES:
            problems.append(f"utility = {self.utility!r}: choose {listed(UTILITIES)}")
        raise_if_invalid(problems)


@dataclass
class Config:
    path: Path | None = None
    data: DataConfig = field(default_factory=DataConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    leaderboard: LeaderboardConfig = field(default_factory=LeaderboardConfig)
    candidates: dict[str, CandidateConfig] = field(default_factory=dict)
    ensembles: dict[str, EnsembleConfig] = field(default_factory=dict)
    seed_groups: dict[str, list[str]] = field(default_factory=dict)  # NAME -> its NAME#sSEED sources (seeds = [...])

    @property
    def root(self) -> Path:
        """The workspace: the folder holding competition.toml (or the current folder)."""
        return self.path.parent if self.path else Path.cwd()

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    def candidate(self, name: str) -> CandidateConfig:
        if name not in self.candidates and name in self.seed_groups:  # the MBR of its seeds, not one model
            members = self.seed_groups[name]
            raise UnknownCandidate(f"{name!r} has seeds = [...]: each seed is its own candidate "
                                   f"({', '.join(members)}) and {name!r} their MBR; name one seed, e.g. "
                                   f"'{members[0]}'")
        if name not in self.candidates:
            close = difflib.get_close_matches(name, list(self.candidates), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownCandidate(f"no candidate {name!r} in {self.path or DEFAULT_CONFIG}{hint}: "
                                   f"add a [candidates.{name}] section")
        return self.candidates[name]


def field_default(item: dataclasses.Field) -> Any:
    """A dataclass field's default value (its default_factory called), or dataclasses.MISSING."""
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def build_dataclass(cls: type, table: dict, section: str, problems: list[str],
                    skip: tuple[str, ...] = ()) -> Any:
    """Instantiate `cls` from a TOML table; unknown keys and wrong types go to `problems`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip and f.init]
    values = {}
    for key, value in table.items():
        if key in skip:
            continue
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            problems.append(f"[{section}] unknown key {key!r}{hint}")
            continue
        if not _type_ok(value, hints[key]):
            problems.append(f"[{section}] {key} = {value!r} should be {_type_name(hints[key])}")
            continue
        values[key] = float(value) if hints[key] is float else value
    try:
        return cls(**values)
    except InvalidValues as error:  # only a check's findings: a bug in a check stays a traceback
        problems.extend(f"[{section}] {message}" for message in error.problems)
        return None


def _candidate(name: str, table: dict, problems: list[str]) -> CandidateConfig | None:
    section = f"candidates.{name}"
    kind = table.get("kind")
    if not isinstance(kind, str):
        others = ", ".join(other for other in kind_names() if other != "lead")
        problems.append(f"[{section}] needs kind = \"lead\" (or {others})")
        return None
    try:
        params_cls = params_class(kind)
    except ConfigError as error:
        problems.append(f"[{section}] {error}")
        return None
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(f"[{section}] enabled = {enabled!r} should be bool")
    augmentations = table.get("augmentations", [])
    if not (isinstance(augmentations, list) and all(isinstance(a, str) for a in augmentations)):
        problems.append(f"[{section}] augmentations = {augmentations!r} should be a list of CSV paths")
        augmentations = []
    seed = table.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        problems.append(f"[{section}] seed = {seed!r} should be a whole number >= 0 (or left out for [cv] seed)")
        seed = None
    seeds = table.get("seeds", [])
    if not (isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            and len(set(seeds)) == len(seeds) and len(seeds) != 1):
        problems.append(f"[{section}] seeds = {seeds!r} should be two or more distinct whole numbers >= 0 "
                        "(e.g. [13, 42, 77]), or left out for one seed")
        seeds = []
    elif seeds and seed is not None:
        problems.append(f"[{section}] seed = {seed} and seeds = {seeds!r}: keep one of them")
    params = build_dataclass(params_cls, table, section, problems,
                             skip=("kind", "enabled", "augmentations", "seed", "seeds"))
    return CandidateConfig(name=name, kind=kind, enabled=bool(enabled), params=params,
                           augmentations=list(augmentations), seed=seed, seeds=list(seeds))


def _expand_seeds(config: Config) -> None:
    """A candidate with seeds = [a, b, ...] becomes the candidates NAME#sa, NAME#sb, ... (one seed
    each) and the ensemble NAME, their per-row MBR."""
    for name, candidate in list(config.candidates.items()):
        if not candidate.seeds:
            continue
        members = [seed_source(name, seed) for seed in candidate.seeds]
        del config.candidates[name]
        for member, seed in zip(members, candidate.seeds):
            config.candidates[member] = dataclasses.replace(candidate, name=member, seed=seed, seeds=[])
        config.ensembles[name] = EnsembleConfig(name=name, members=members, method="mbr",
                                                enabled=candidate.enabled)
        config.seed_groups[name] = members


SECTIONS = {"data": DataConfig, "metric": MetricConfig, "cv": CVConfig, "submit": SubmitConfig,
             "tracking": TrackingConfig, "leaderboard": LeaderboardConfig}


def parse_config(raw: dict, path: Path | None = None) -> Config:
    """Build a Config from parsed TOML, raising one ConfigError that lists every problem."""
    problems: list[str] = []
    config = Config(path=path)
    for key, table in raw.items():
        if key in SECTIONS:
            if not isinstance(table, dict):
                problems.append(f"[{key}] should be a table")
                continue
            setattr(config, key, build_dataclass(SECTIONS[key], table, key, problems))
        elif key in ("candidates", "ensembles"):
            example = 'kind = "lead"' if key == "candidates" else 'method = "mbr"'
            if not isinstance(table, dict):
                problems.append(f"{key} = {table!r} is not a table: define each one as its own "
                                f"[{key}.NAME] section (e.g. [{key}.NAME] with {example})")
                continue
            for name, body in table.items():
                section = f"{key}.{name}"
                if not isinstance(body, dict):
                    problems.append(f"[{key}] {name} = {body!r} is not a table: make it a section [{section}] "
                                    f"with its keys (e.g. {example})")
                elif key == "candidates":
                    candidate = _candidate(name, body, problems)
                    if candidate:
                        config.candidates[name] = candidate
                elif "name" in body:
                    problems.append(f"[{section}] unknown key 'name': the section header names the ensemble")
                else:
                    ensemble = build_dataclass(EnsembleConfig, {"name": name, **body}, section, problems)
                    if ensemble:
                        config.ensembles[name] = ensemble
        else:
            sections = list(SECTIONS) + ["candidates", "ensembles"]
            close = difflib.get_close_matches(key, sections, n=1)
            hint = f"; did you mean [{close[0]}]?" if close else f"; sections: {', '.join(sections)}"
            problems.append(f"unknown section [{key}]{hint}")
    clash = {name for name in config.candidates if name in config.ensembles or
             (config.candidates[name].seeds and any(seed_source(name, seed) in config.candidates
                                                    for seed in config.candidates[name].seeds))}
    _expand_seeds(config)
    if clash:
        problems.append(f"names used by both a candidate and an ensemble: {', '.join(sorted(clash))}")
    if problems:
        where = path or DEFAULT_CONFIG
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return config


def load_config(path: str | Path | None = None) -> Config:
    """Read competition.toml (or `path`). A missing default file means all defaults."""
    explicit = path is not None
    config_path = Path(path) if explicit else Path.cwd() / DEFAULT_CONFIG
    if not config_path.exists():
        if explicit:
            raise ConfigError(f"config file {config_path} not found: pass an existing --config or drop it")
        return Config(path=None)
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{config_path}: not valid TOML ({error})") from None
    return parse_config(raw, config_path.resolve())


