"""Checkpoints: the TensorFlow snapshot of a run, the commit protocol that makes one count, the
mirror to remote storage, the index of a run dir's checkpoints and rollback to one of them."""
