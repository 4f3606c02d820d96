"""Input checks shared by the recipes."""

from __future__ import annotations

import pytest
import torch

from recipes.common import check_manifest, strict_transfer


def write(path, text):
    path.write_text(text)
    return str(path)


def test_manifest_checks_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist. Run the corpus"):
        check_manifest(str(tmp_path / "nope.csv"), hint="Run the corpus preparation.")
    header_only = write(tmp_path / "empty.csv", "ID,duration,wav,wrd\n")
    with pytest.raises(ValueError, match="is empty"):
        check_manifest(header_only)
    no_text = write(tmp_path / "cols.csv", "ID,duration,wav\na,1.0,x.wav\n")
    with pytest.raises(ValueError, match=r"lacks the columns \['wrd'\]"):
        check_manifest(no_text)
    missing_audio = write(tmp_path / "m.csv", "ID,duration,wav,wrd\na,1.0,$data_root/a.wav,HI\n")
    with pytest.raises(FileNotFoundError, match="1 audio files listed"):
        check_manifest(missing_audio, data_root=str(tmp_path))
    (tmp_path / "a.wav").write_bytes(b"")
    assert check_manifest(missing_audio, data_root=str(tmp_path)) == 1


def test_strict_transfer_refuses_a_checkpoint_of_another_model(tmp_path):
    torch.save(torch.nn.Linear(4, 3).state_dict(), tmp_path / "base.ckpt")
    model = torch.nn.Linear(4, 3)
    strict_transfer(model, str(tmp_path / "base.ckpt"))
    with pytest.raises(RuntimeError, match="does not fit the model defined in the YAML"):
        strict_transfer(torch.nn.Linear(4, 5), str(tmp_path / "base.ckpt"))
