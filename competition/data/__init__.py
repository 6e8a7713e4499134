"""The competition's rows and the files stages exchange: reading and checking the CSVs, the folds
(near-duplicate clusters kept together, the threshold calibrated to the test), the train -> test
similarity shift and its weights, augmented rows as a fold may see them, and the runs/ layout of
predictions.

Layer 2. May import: the core and competition.text. Never models, candidates or anything above.
"""
