"""How texts are tokenised and compared: the tokenizers (Kiwi morphemes, whitespace, English), the
persistent token cache, ROUGE as the competition computes it, MBR over candidate outputs, TF-IDF
similarity between dialogues, and a dialogue's turns.

Layer 1, above the core. May import: the core (competition.errors, .choices, .progress, .hashing,
.files) and numpy, scipy, scikit-learn, kiwipiepy. Never data, models or anything above.
"""
