"""User-facing errors: each becomes one line and exit code 2 in the CLI."""


class CompetitionError(Exception):
    """A user mistake (bad file, bad config, missing model): one line, what to do."""


class DataError(CompetitionError):
    """A competition data file is missing or malformed."""


class ConfigError(CompetitionError):
    """competition.toml has an unknown key, a wrong type or a bad value."""


class FoldMismatch(CompetitionError):
    """The data no longer matches the folds it was split with."""


class UnknownCandidate(CompetitionError):
    """A candidate or ensemble name that is not in the config or has no predictions."""


class SubmissionError(CompetitionError):
    """A submission file or log operation was refused."""


class MissingFolds(CompetitionError):
    """A stage needs folds/folds.csv and it has not been built."""


class CudaRequired(CompetitionError):
    """A candidate that only runs with CUDA was required on a machine without it."""


class LeaderboardError(CompetitionError):
    """The leaderboard platform refused a request, cannot be reached, or is not set up."""


class InvalidValues(ValueError):
    """Raised by a config dataclass's __post_init__ with every bad value it found, each message
    "key = value: choose ..."; build_dataclass reports each one under the section's name."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def raise_if_invalid(problems: list[str]) -> None:
    """The end of a settings dataclass's __post_init__: every problem it collected, at once."""
    if problems:
        raise InvalidValues(problems)
