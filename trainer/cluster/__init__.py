"""Several processes and devices: the tf.distribute strategy and the agreement between
workers, and the SLURM requeue decision."""
