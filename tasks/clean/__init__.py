"""clean: normalize text, collapse duplicates, quarantine what cannot be trained on.

The stage's rules and its plan are in clean_parts.py; redact.py is the redaction rule, which a
model also applies to the texts it scores. This file stays empty on purpose: a stage that runs
only redaction (train, evaluate) imports this package, and its code fingerprint then covers
redaction alone, not clean's steps."""
