# TEMPORARY local-only stub; replaced by the real storage seam.
import os, tempfile, shutil, time
from dataclasses import dataclass

class StorageError(Exception):
    pass

@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0

class Storage:
    def __init__(self, root, options=None, retry=RetryPolicy(), sleep=time.sleep):
        self.root = root.rstrip("/") or "/"
        self.is_remote = "://" in root
    def _p(self, rel): return os.path.join(self.root, rel) if rel else self.root
    def url(self, rel): return self._p(rel)
    def local_path(self, rel): return self._p(rel)
    def exists(self, rel): return os.path.exists(self._p(rel))
    def read_bytes(self, rel):
        with open(self._p(rel), "rb") as f: return f.read()
    def read_text(self, rel): return self.read_bytes(rel).decode()
    def write_bytes(self, rel, data):
        p = self._p(rel); os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p + ".tmpw", "wb") as f: f.write(data)
        os.replace(p + ".tmpw", p)
    def write_text(self, rel, text): self.write_bytes(rel, text.encode())
    def listdir(self, rel=""):
        try: return os.listdir(self._p(rel))
        except FileNotFoundError: return []
    def delete(self, rel):
        try: os.remove(self._p(rel))
        except FileNotFoundError: pass
    def probe(self): pass
