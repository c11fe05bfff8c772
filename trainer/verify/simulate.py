"""The data check's reading, in a process of its own: the job's pipeline read through its logical
shards exactly as the workers of each start read it, every example fingerprinted.

``python -m trainer.verify.simulate SPEC OUT``: SPEC (JSON) names a run's ``config.json`` (the
job, its settings, the seed: as ``export`` rebuilds a run's job) and holds, per run, its starts:
worker count, first and end step (0-based), and the file of the iterator state the start resumes
from (the one the real run committed at its stop; none for a new run). The simulated workers
share this one process (one TensorFlow start-up, not one per worker), yet each builds the job's
data anew as a worker process builds it (Keras's session cleared, the run's seed set,
``build_data`` called), so its shuffles get the seeds that they get
in a new worker process; it then reads its shards step by step. OUT (JSON), per run: the reads
``[step, shard, pass, [fingerprint of each example]]`` and each start's shard positions at its
end; or, for a pipeline not read in shards, why.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from .messages import count


class NotSharded(Exception):
    """The pipeline is read whole by every worker; the message says why."""


def main(argv: list[str]) -> int:
    from ..job import load
    spec = json.loads(Path(argv[0]).read_text())
    config = json.loads(Path(spec["config"]).read_text())  # (as export rebuilds a run's job)
    job = load(config["job"])
    job.choose(None, config.get("job_settings") or {})
    try:
        out = {name: _read_run(job, config["trainer"], starts) for name, starts in spec["runs"].items()}
    except NotSharded as exc:
        out = {"not_sharded": str(exc)}
    Path(argv[1]).write_text(json.dumps(out))
    return 0


def _read_run(job, cfg, starts: list[dict]) -> dict:
    reads, ends = [], []
    for start in starts:
        positions = {}
        for index in range(start["workers"]):
            reader = _reader(job, cfg, start, index)
            for step in range(start["begin"], start["end"]):
                parts, now = reader.parts(), reader.positions()
                for shard, batch in zip(reader.shards, parts):
                    reads.append([step, shard.index, now[shard.index].passes, fingerprints(batch)])
            positions.update({k: [p.passes, p.taken] for k, p in reader.positions().items()})
        ends.append([positions[k] for k in sorted(positions)])
    return {"reads": sorted(reads, key=lambda read: read[:2]), "ends": ends}


def _reader(job, cfg, start: dict, index: int):
    """Worker ``index``'s shards in ``start``, as a new worker process has them: the job's data
    built anew, bound as that worker, the start's state restored, opened where the start begins
    (the trainer's own path)."""
    import keras
    import tensorflow as tf

    from ..data import accepted
    from ..data.shard_plan import Workers
    from ..data.streaming import StreamingData
    keras.backend.clear_session()
    if cfg.get("deterministic", True):  # (as the run's processes: it shapes the pipelines' graphs too)
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg["seed"])
    raw = job.call("build_data")
    what = f"job {job.label}: build_data's training data"
    train = accepted.from_job(raw[0] if isinstance(raw, tuple) and len(raw) == 2 else raw, what)
    if not isinstance(train, StreamingData):
        raise NotSharded("it is not a tf.data pipeline read as a stream")
    if train.steps_per_epoch is None:
        raise NotSharded("its length is unknown: its first epoch is read whole by every worker (the data check "
                         "needs dataset.apply(tf.data.experimental.assert_cardinality(N)))")
    workers = start["workers"]
    train.bind(tf.distribute.get_strategy(), Workers(workers, index, 0, cfg.get("data_shards")))
    if start["state"]:
        train.state.assign(Path(start["state"]).read_bytes())
    train.iterator(*divmod(start["begin"], train.steps_per_epoch))
    if train.reader is None:
        raise NotSharded(f"a run on {count(workers, 'worker')} reads the whole stream on every worker (the "
                         "trainer's start-up warning says why)")
    return train.reader


def fingerprints(batch) -> list[str]:
    """A hash of each example of ``batch`` (a nest of tensors, examples along the first axis): the
    bytes of its every component."""
    import tensorflow as tf
    columns = [_rows(leaf) for leaf in tf.nest.flatten(batch)]
    digest = [hashlib.blake2b(digest_size=8) for _ in columns[0]]
    for column in columns:
        for h, row in zip(digest, column):
            h.update(len(row).to_bytes(8, "little") + row)
    return [h.hexdigest() for h in digest]


def _rows(leaf) -> list[bytes]:
    """Each example's bytes of one component (strings: their bytes joined)."""
    import numpy as np
    import tensorflow as tf
    if isinstance(leaf, tf.SparseTensor):
        leaf = tf.sparse.to_dense(leaf)
    rows = [np.asarray(row.numpy()) for row in leaf] if isinstance(leaf, tf.RaggedTensor) else list(leaf.numpy())
    return [b"\0".join(np.asarray(r).ravel().tolist()) if np.asarray(r).dtype == object else np.asarray(r).tobytes()
            for r in rows]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
