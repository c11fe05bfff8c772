"""``--waiting-worker``: pytest-xdist's ``--dist loadfile``, with its last worker kept for the files
that mostly wait rather than compute (SLURM jobs through their time limits, the bounded waits for
a lost worker). The other workers take every other file, so the CPU-bound tests keep the
machine's cores while those files wait beside them. The notice tests stay with the others: their
deadlines leave a margin for a machine's load, not for SLURM jobs starting beside them.
`make test` runs one worker more than TEST_WORKERS, with this option."""
import pytest
from xdist.scheduler import LoadFileScheduling

WAITING = ("tests/test_slurm.py", "tests/test_worker_loss.py")


def pytest_addoption(parser):
    parser.addoption("--waiting-worker", action="store_true",
                     help="with -n N --dist loadfile: the last worker runs only the files that mostly wait "
                          f"({', '.join(WAITING)}), the others everything else")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("waiting_worker") and config.getoption("dist") == "loadfile":
        return WaitingFilesApart(config, log)
    return None


class WaitingFilesApart(LoadFileScheduling):
    _waiting_id: str | None = None  # the worker kept for WAITING, chosen once every worker has collected

    def _waiting_node(self):
        if self._waiting_id is None:
            self._waiting_id = max((n.workerinput["workerid"] for n in self.nodes), key=lambda w: int(w[2:]))
        # (a worker that crashed is replaced under another id: then any worker takes any file)
        return next((n for n in self.nodes if n.workerinput["workerid"] == self._waiting_id), None)

    def _belongs(self, node, scope: str) -> bool:
        waiting = self._waiting_node()
        return len(self.nodes) < 2 or waiting is None or (node is waiting) == (scope in WAITING)

    def _assign_work_unit(self, node) -> None:
        """The first queued file this worker may take (at the queue's head, where the base class
        takes it from); none, if none is left for it."""
        scope = next((s for s in self.workqueue if self._belongs(node, s)), None)
        if scope is not None:
            self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    def _reschedule(self, node) -> None:
        if not node.shutting_down and not any(self._belongs(node, s) for s in self.workqueue):
            node.shutdown()  # (after its pending tests)
            return
        super()._reschedule(node)
