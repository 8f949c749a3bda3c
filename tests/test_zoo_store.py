"""The zoo store: content addressing, verified reads, crash recovery, bundles, schema checks."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from edgemvp.errors import UsageError
from edgemvp.models.weights import sha256_bytes
from edgemvp.units import unit_space
from edgemvp.zoo import CorruptEntry, EntryManifest, ZooStore
from edgemvp.zoo.store import MANIFEST, MARKER, WEIGHTS
from tests.helpers import Payload, make_entry


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_put_get_roundtrip_is_content_addressed(tmp_path: Path) -> None:
    manifest, weights = make_entry(seed=1)
    with ZooStore.open(tmp_path / "zoo", create=True) as store:
        entry_id = store.put(manifest, weights, build_seconds=1.5)
        assert entry_id == hashlib.sha256(manifest.to_bytes()).hexdigest()
        assert store.put(manifest, weights) == entry_id and len(store) == 1  # idempotent
        entry = store.get(entry_id)
        assert entry.manifest == manifest
        assert (entry.folder / MANIFEST).read_bytes() == manifest.to_bytes()
        model = entry.load_model()
        assert model.get_classifier().out_features == 3
        assert store.resolve(entry_id[:10]) == entry_id
        assert store.job_entry(manifest.job_key) == entry_id
        assert store.rows()[0].build_seconds == 1.5


def test_queries_by_class_base_and_mask_matrix(tmp_path: Path) -> None:
    entries = [make_entry(seed=s, classes=c) for s, c in [(1, ("0", "1", "2")), (2, ("2", "3", "4")), (3, ("5", "6", "7"))]]
    other_base = make_entry(seed=4, classes=("8", "9", "0"), base_sha256="c" * 64)
    with ZooStore.open(tmp_path / "zoo", create=True) as store:
        ids = [store.put(m, w) for m, w in entries + [other_base]]
        assert [r.id for r in store.rows(class_name="2")] == ids[:2]
        assert [r.id for r in store.rows(base_sha256="c" * 64)] == ids[3:]
        got_ids, matrix = store.mask_matrix(base_sha256="b" * 64)
    assert got_ids == ids[:3]
    space = unit_space("resnet18")
    assert matrix.shape == (3, sum(u.size for u in space.units)) and matrix.dtype == bool
    offset = 0
    for unit in space.units:  # every row is exactly that entry's kept indices, unit by unit
        for row, (manifest, _) in zip(matrix, entries):
            assert np.flatnonzero(row[offset : offset + unit.size]).tolist() == list(manifest.masks.kept[unit.name])
        offset += unit.size


def test_bit_flip_and_truncation_are_refused_naming_the_entry(tmp_path: Path) -> None:
    with ZooStore.open(tmp_path / "zoo", create=True) as store:
        a = store.put(*make_entry(seed=1))
        b = store.put(*make_entry(seed=2))
        weights = store.folder(a) / WEIGHTS
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.chmod(0o644)
        weights.write_bytes(bytes(data))
        with pytest.raises(CorruptEntry, match=f"zoo entry {a[:12]}: {WEIGHTS} refused"):
            store.get(a).load_model()
        manifest = store.folder(b) / MANIFEST
        manifest.chmod(0o644)
        manifest.write_bytes(manifest.read_bytes()[:-7])
        with pytest.raises(CorruptEntry, match=f"zoo entry {b[:12]}: {MANIFEST} is corrupt"):
            store.get(b)
        report = store.verify()
    assert not report.clean and {i for i, _ in report.corrupt} == {a, b}


def test_pickle_as_weights_is_refused_and_never_unpickled(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bomb = pickle.dumps({"conv1.weight": Payload()})
    with ZooStore.open(tmp_path / "zoo", create=True) as store:
        a = store.put(*make_entry(seed=1))
        weights = store.folder(a) / WEIGHTS
        weights.chmod(0o644)
        weights.write_bytes(bomb)  # dropped in place of the weights
        with pytest.raises(CorruptEntry, match=a[:12]):
            store.get(a).load_model()
        # a self-consistent entry whose manifest names the pickle's sha256 is refused by the safetensors parser,
        # before anything is stored
        manifest, _ = make_entry(seed=2)
        crafted = EntryManifest(**{**manifest.__dict__, "weights_sha256": sha256_bytes(bomb)})
        with pytest.raises(UsageError, match="corrupt safetensors file .it is a pickle"):
            store.put(crafted, bomb)
        assert len(store) == 1
    assert "pwned" not in capsys.readouterr().out


def test_recover_finishes_interrupted_writes(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    with ZooStore.open(root, create=True) as store:
        entry_id = store.put(*make_entry(seed=1))
        store.db.execute("DELETE FROM entries")  # as if killed after the rename, before the index row
        store.db.execute("DELETE FROM entry_classes")
        (root / "objects" / ".tmp-deadbeef-1-0").mkdir()  # as if killed while writing files
        assert len(store) == 0
        report = store.verify()
        assert report.clean and report.recovered == [entry_id] and report.removed_temp == 1
        assert len(store) == 1 and store.get(entry_id).manifest.job_key.startswith("job-")


def test_newer_schema_is_refused_and_untouched(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    with ZooStore.open(root, create=True) as store:
        store.put(*make_entry(seed=1))
    (root / MARKER).write_text(json.dumps({"format": "edgemvp-zoo", "schema_version": 99}))
    before = _snapshot(root)
    with pytest.raises(UsageError, match="newer edgemvp"):
        ZooStore.open(root)
    with pytest.raises(UsageError, match="newer edgemvp"):
        ZooStore.open(root, create=True)
    assert _snapshot(root) == before


def test_refuses_a_folder_that_is_not_a_zoo(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a zoo"):
        ZooStore.open(tmp_path)
    with pytest.raises(UsageError, match="not a zoo"):
        ZooStore.open(tmp_path, create=True)
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]


def test_bundle_roundtrip_and_tampered_bundle(tmp_path: Path) -> None:
    with ZooStore.open(tmp_path / "a", create=True) as store:
        ids = [store.put(*make_entry(seed=s)) for s in (1, 2)]
        assert store.export_bundle(tmp_path / "zoo.bundle") == 2
    with ZooStore.open(tmp_path / "b", create=True) as other:
        assert other.import_bundle(tmp_path / "zoo.bundle") == (2, 0)
        assert other.import_bundle(tmp_path / "zoo.bundle") == (0, 2)
        assert [r.id for r in other.rows()] == ids
        assert other.verify().clean
    import tarfile

    with tarfile.open(tmp_path / "zoo.bundle") as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(WEIGHTS)][-1]
    data = bytearray((tmp_path / "zoo.bundle").read_bytes())
    data[last.offset_data + last.size // 2] ^= 0xFF  # inside the last weights file
    (tmp_path / "bad.bundle").write_bytes(bytes(data))
    with ZooStore.open(tmp_path / "c", create=True) as third:
        with pytest.raises(UsageError, match="bad.bundle"):
            third.import_bundle(tmp_path / "bad.bundle")
        assert len(third) == 0
    (tmp_path / "junk.bundle").write_bytes(b"not a tar")
    with ZooStore.open(tmp_path / "c") as third, pytest.raises(UsageError, match="unreadable bundle"):
        third.import_bundle(tmp_path / "junk.bundle")


@pytest.mark.slow  # over 15 s on 2 cores: make test-all
def test_weights_bytes_do_not_depend_on_the_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("from tests.helpers import make_entry; import hashlib; "
            "print(hashlib.sha256(make_entry(seed=3)[1]).hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).parent.parent).stdout.strip() for _ in range(3)}
    assert len(runs) == 1  # safetensors writes its header from a hash map; ours is canonical
