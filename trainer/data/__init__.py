"""Training data that resumes exactly: in-memory arrays and the user's own epoch batches,
split over workers and replicas, with per-example randomness."""
