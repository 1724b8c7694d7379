"""The work behind each command: train, evaluate, sample, render."""
