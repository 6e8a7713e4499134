"""Work on top of sources: tune (a decoding-settings search over a trained source, grid or optuna
TPE: search is the one module that imports optuna) and augment (new training rows written to
data/augmented/).

Layer 8. May import: everything below (core ... run). Never submit or cli.
"""
