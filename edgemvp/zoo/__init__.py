"""The zoo: the server-side memory MVP votes from (store, builds, and later the server)."""
from edgemvp.manifest import EntryManifest, ZooEntry
from edgemvp.zoo.store import CorruptEntry, ZooStore

__all__ = ["CorruptEntry", "EntryManifest", "ZooEntry", "ZooStore"]
