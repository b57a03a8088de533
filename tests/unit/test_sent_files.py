"""``_files``: a file written or sent home lands whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmlray import _files


def test_bytes_land_in_place_under_new_folders_and_replace_a_file_whole(tmp_path: Path) -> None:
    path = str(tmp_path / "a" / "b" / "out.bin")
    _files.write_local(path, b"first", "t1")
    _files.write_local(path, memoryview(b"second"), "t2")
    assert Path(path).read_bytes() == b"second"
    assert sorted(p.name for p in Path(path).parent.iterdir()) == ["out.bin"]


def test_a_write_that_fails_leaves_neither_a_partial_file_nor_a_changed_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"kept")
    with pytest.raises(TypeError):
        _files.write_local(str(path), "not bytes", "t3")  # type: ignore[arg-type]
    assert path.read_bytes() == b"kept" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_bytes_sent_by_a_temporary_file_which_is_removed_after(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def send(source: str) -> str:
        seen.append(Path(source).read_bytes())
        assert Path(source).name.startswith("cmlray-send-")
        seen.append(source.encode())
        return "sent"

    assert _files.send_via_temp(b"payload", send) == "sent"
    assert seen[0] == b"payload" and not Path(seen[1].decode()).exists()
    with pytest.raises(OSError):
        _files.send_via_temp(b"x", lambda source: (seen.append(source.encode()), _fail())[1])
    assert not Path(seen[2].decode()).exists()  # removed when the send failed too


def _fail() -> str:
    raise OSError("the home agent is gone")
