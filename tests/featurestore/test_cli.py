import click
import pytest
from click.testing import CliRunner

from featurestore.cli import Command, Group, main
from featurestore.errors import StoreError
from tests.featurestore import synth


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    synth.write_store(root / "a.zarr", synth.token_table())
    synth.write_store(root / "b.zarr", synth.token_table(seed=3), codec="fp16")
    (root / "notes").mkdir()
    return root


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_info_describes_the_store(root):
    result = run("info", root / "a.zarr")
    assert result.exit_code == 0, result.output
    for expected in ("model         synthetic", "dataset       synth", "layers        3: 0-1, 3", "codec         int8o:",
                     "complete      yes", "bytes/token", "size on disk"):
        assert expected in result.output


def test_ls_lists_every_store_with_its_codec(root):
    result = run("ls", root)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["store", "model", "dataset"]
    assert [line.split()[0] for line in lines[1:]] == ["a.zarr", "b.zarr"]
    assert "int8o" in lines[1] and "fp16" in lines[2]


def test_verify_exit_codes(root, tmp_path):
    assert run("verify", root / "a.zarr").exit_code == 0
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(root / "a.zarr", bad)
    victim = bad / "layers" / "0" / "codes" / "c" / "1" / "0"
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = run("verify", bad)
    assert result.exit_code == 1
    assert "BAD  shard 1 (tokens" in result.output and "layers/0/codes/c/1/0: checksum mismatch" in result.output


def test_missing_store_is_a_one_line_error(tmp_path):
    result = run("info", tmp_path / "nope.zarr")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: no feature store at {tmp_path / 'nope.zarr'}"]
    assert run("ls", tmp_path / "nope").output.strip() == f"Error: {tmp_path / 'nope'} is not a directory"


@pytest.mark.parametrize("cls", [Command, Group])
def test_the_boundary_prints_a_user_errors_first_line_and_a_bug_keeps_its_traceback(cls):
    def fail(error):
        def command():
            raise error

        if cls is Command:
            return click.command(cls=Command)(command)
        group = click.group(cls=Group)(lambda: None)
        group.command("sub")(command)
        return group

    args = [] if cls is Command else ["sub"]
    result = CliRunner().invoke(fail(StoreError("what went wrong\nmore detail")), args)
    assert (result.exit_code, result.output) == (1, "Error: what went wrong\n")
    result = CliRunner().invoke(fail(RuntimeError("a bug")), args)
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


@pytest.mark.parametrize("command", ["push", "pull"])
def test_copy_commands_name_every_kind_of_location_they_take(command):
    help_text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
    assert all(kind in help_text for kind in ("hf://datasets/ORG/NAME", "s3://", "gs://", "file://"))
