"""From sources to the leaderboard: the submission file and log, the history of CV against public
and private scores, the leaderboard platform (leaderboard is the one module that imports kaggle),
export of a trained model, and the pipeline that runs the whole flow.

Layer 9, the top of the library. May import: everything below. Never cli.
"""
