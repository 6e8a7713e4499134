"""Making sources: a candidate fitted and predicted fold by fold (in this process, accelerate
processes or a Ray cluster: ray_cluster is the one module that imports ray), an ensemble of
sources, and the runner that plans, skips what is current and writes runs/NAME/.

Layer 7. May import: everything below (core, text, data, models, candidates, workspace, results).
Never stages, submit or cli.
"""
