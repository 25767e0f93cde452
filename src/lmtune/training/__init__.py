"""Training on Hugging Face Trainer with lmtune's defaults and callbacks."""
