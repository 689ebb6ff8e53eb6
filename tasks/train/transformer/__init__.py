"""The torch text classifier: model and inference (torch_model.py, torch_classifier.py), the
fine-tuning loop (fine_tune_loop.py) and the trainer/optimizer (trainer.py)."""
