"""The converters' shared command-line pieces: the checkpoint-file check and the report/upload at the end."""

import argparse

import pytest

from conversion import command_line, convert_tokenbridge_to_diffusers, convert_tokenset_to_diffusers


@pytest.mark.parametrize("module", [convert_tokenset_to_diffusers, convert_tokenbridge_to_diffusers])
def test_both_converters_take_the_shared_flags(module, tmp_path):
    checkpoint = tmp_path / "missing.pth"
    flag = "--checkpoint" if module is convert_tokenbridge_to_diffusers else "--generator_checkpoint"
    with pytest.raises(SystemExit):
        module.parse_args([flag, str(checkpoint), "--output_dir", str(tmp_path / "out")])
    checkpoint.write_bytes(b"x")
    args = module.parse_args(
        [flag, str(checkpoint), "--output_dir", str(tmp_path / "out"), "--id2label", "none", "--push_to_hub", "o/r"]
    )
    assert (args.id2label, args.push_to_hub) == ("none", "o/r")


def test_a_missing_checkpoint_is_a_usage_error_naming_the_file(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    with pytest.raises(SystemExit):
        command_line.check_checkpoint_files(parser, None, str(tmp_path / "nope.pth"))
    assert "nope.pth" in capsys.readouterr().err


def test_report_and_push_uploads_the_folder_once(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(command_line, "push_folder_to_hub", lambda *args, **kwargs: calls.append((args, kwargs)))
    command_line.report_and_push(tmp_path, None, "TokenSet")
    assert calls == [] and f"wrote {tmp_path}" in capsys.readouterr().out
    command_line.report_and_push(tmp_path, "org/name", "TokenBridge")
    assert calls == [((tmp_path, "org/name"), {"commit_message": "Convert TokenBridge"})]
    assert "https://huggingface.co/org/name" in capsys.readouterr().out
