"""The training loop and what it carries: position state, the saver, progress, history,
callbacks and their state, fit's options, the model's variables."""
