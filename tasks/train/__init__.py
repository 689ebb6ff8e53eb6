"""train: fit a model on the train split (fit.py); the tf-idf + NB-LR baseline (baseline.py,
ngrams.py) and the transformer (transformer/)."""
