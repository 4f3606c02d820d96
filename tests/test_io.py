"""Writers never destroy: atomic files, folders swapped whole, foreign folders refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recipes import io
from recipes.io import MARKER, TargetError, replace_folder, stamp_problems, write_stamp


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_folder_with_a_users_files_is_refused_and_kept(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("my notes")
    (target / "other_model").mkdir()
    (target / "other_model" / "model.ckpt").write_bytes(b"weights")
    before = tree(target)
    refused = pytest.raises(TargetError, match=r"notes\.txt.*--overwrite")
    with refused, replace_folder(target) as tmp:
        (tmp / "model.ckpt").write_bytes(b"new")
    assert tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left
    with replace_folder(target, overwrite=True) as tmp:
        (tmp / "model.ckpt").write_bytes(b"new")
    assert (target / "model.ckpt").read_bytes() == b"new" and not (target / "notes.txt").exists()


def test_our_own_folder_is_replaced_but_not_once_a_user_added_a_file(tmp_path):
    target = tmp_path / "out"
    with replace_folder(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / MARKER).is_file()
    with replace_folder(target) as tmp:
        (tmp / "a.txt").write_text("2")
    assert (target / "a.txt").read_text() == "2"
    (target / "mine.txt").write_text("keep")
    with pytest.raises(TargetError, match="mine.txt"), replace_folder(target) as tmp:
        (tmp / "a.txt").write_text("3")
    assert (target / "a.txt").read_text() == "2" and (target / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("where", ["equal", "inside", "around"])
def test_a_target_equal_to_inside_or_around_its_source_is_refused_even_with_overwrite(
    tmp_path, where
):
    source = tmp_path / "run" / "inference"
    source.mkdir(parents=True)
    (source / "adapter.ckpt").write_bytes(b"trained")
    target = {"equal": source, "inside": source / "x", "around": tmp_path / "run"}[where]
    refused = pytest.raises(TargetError, match="the folder it is made from")
    with refused, replace_folder(target, sources=[source], overwrite=True):
        pass
    assert (source / "adapter.ckpt").read_bytes() == b"trained"


def test_an_error_while_writing_leaves_the_old_folder(tmp_path):
    target = tmp_path / "out"
    with replace_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), replace_folder(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_kill_in_the_middle_of_the_swap_leaves_old_or_new(tmp_path, monkeypatch, exchange):
    """With the two-rename fallback, a kill between the renames leaves the old folder aside;
    the next write puts it back before anything else. With the exchange, one step."""
    target = tmp_path / "out"
    with replace_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    if not exchange:
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def killed_after_first(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", killed_after_first)
    try:
        with replace_folder(target) as tmp:
            (tmp / "a.txt").write_text("new")
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(io.os, "replace", real_replace)
    seen = (target / "a.txt").read_text() if target.exists() else None
    assert seen in ("old", "new")
    with replace_folder(target) as tmp:  # the next write starts from a clean state
        (tmp / "a.txt").write_text("next")
    assert (target / "a.txt").read_text() == "next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_stamp_notices_an_edited_or_missing_file(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"weights")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text("{}")
    write_stamp(tmp_path, "stamp.json", {"sha256": "abc"})
    assert stamp_problems(tmp_path, "stamp.json") == []
    (tmp_path / "w.safetensors").write_bytes(b"weightz")
    (tmp_path / "sub" / "config.json").unlink()
    problems = stamp_problems(tmp_path, "stamp.json")
    assert problems[0] == "sub/config.json is missing"
    assert len(problems) == 2 and problems[1].startswith("w.safetensors has SHA-256")


def test_atomic_file_writes_leave_no_temporary(tmp_path):
    path = io.write_json(tmp_path / "s.json", {"a": 1})
    io.write_json(path, {"a": 2})
    assert path.read_text() == '{\n  "a": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_atomic_files_get_the_modes_plain_files_get(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (io.write_text(tmp_path / "atomic.txt", "x").stat().st_mode & 0o777) == (
        plain.stat().st_mode & 0o777
    )
