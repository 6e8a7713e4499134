"""What the stored predictions say: whether a source is current (provenance), the CV leaderboard and
its test-matched score, training curves, scoring a predictions file, and the optional MLflow
tracking (the one module that imports mlflow).

Layer 6. May import: the core, text, data, models, candidates and workspace. Never run, stages,
submit or cli.
"""
