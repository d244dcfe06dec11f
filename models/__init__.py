"""PyTorch side: weight-to-device mapping, noise models, robust training, Monte Carlo evaluation, SWIM planning."""
