"""A config mistake on the command line is one line naming the nearest valid names, not a traceback."""
from __future__ import annotations

import pytest

from ofa_ds.train import pretrain_main


@pytest.mark.parametrize("override,expected", [
    ("train.max_step=3", "unknown field 'max_step'; did you mean max_steps?"),
    ("optim.lrr=1e-3", "did you mean lr?"),
    ("trian.max_steps=3", "unknown section 'trian'; did you mean train?"),
    ("model.zzz=1", "valid: "),  # nothing near: every field of the section is listed
])
def test_unknown_override_is_one_line_with_nearest_names(override, expected, capsys):
    assert pretrain_main([override]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("ofa-ds pretrain: error: ") and expected in err


def test_unknown_field_in_a_config_file(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nmax_stepz = 3\n")
    assert pretrain_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "did you mean max_steps?" in err
