"""Training, evaluation and model-card writing: never imported to estimate a film."""
