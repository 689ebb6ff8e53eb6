"""The torch text classifier: model and inference (torch_model.py, torch_classifier.py), the
fine-tuning on transformers' Trainer (fine_tune.py) and the trainer/optimizer (trainer.py)."""
