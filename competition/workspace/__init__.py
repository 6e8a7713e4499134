"""A workspace: competition.toml read into one Config (every section checked at load, each
candidate's Params checked by its kind), and a fresh workspace folder written by `init`.

Layer 5, right above competition.candidates: the config holds each candidate's Params, so it asks
the registry for their classes. May import: the core, text, data, models and candidates. Never
results, run, stages, submit or cli.
"""
