"""`chainmail keys …`, run the way users run it: through ``chainmail.cli.main``."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from typer.testing import CliRunner

from chainmail.cli import app, main
from chainmail.errors import KeystoreError
from chainmail.keys import Keypair
from chainmail.keystore import MIN, Keystore

PASS = "correct horse battery staple"


@dataclass
class Run:
    code: int
    out: str
    err: str


Cli = Callable[..., Run]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("CHAINMAIL_HOME", str(path))
    monkeypatch.setenv("CHAINMAIL_PASSPHRASE", PASS)
    # The default cost is tested once, in the subprocess test; here only the CLI is.
    monkeypatch.setattr("chainmail.cli.keys.INTERACTIVE", MIN)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    return path


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Call the console script's entry point in-process with ``args``."""

    def run(*args: str) -> Run:
        monkeypatch.setattr("sys.argv", ["chainmail", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return Run(code=0 if code is None else int(code), out=captured.out, err=captured.err)

    return run


def one_line_error(result: Run, *fragments: str) -> None:
    assert result.code == 1, result
    assert result.out == ""
    assert result.err.startswith("chainmail: keystore: "), result.err
    assert result.err.count("\n") == 1, result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


# -- new / show / list -----------------------------------------------------------------------


def test_new_prints_id_and_stores_key(home: Path, cli: Cli) -> None:
    result = cli("keys", "new", "alice")
    assert result.code == 0, result
    [(name, fid)] = Keystore(home).list()
    assert name == "alice"
    assert "Created key 'alice'" in result.out
    assert fid in result.out
    assert str(home / "keys" / "alice.json") in result.out
    assert Keystore(home).load("alice", PASS).id == fid


def test_new_json(home: Path, cli: Cli) -> None:
    result = cli("keys", "new", "alice", "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    keypair = Keystore(home).load("alice", PASS)
    assert data == {
        "name": "alice",
        "id": keypair.id,
        "curve_public": base64.b64encode(keypair.curve_public()).decode(),
        "path": str(home / "keys" / "alice.json"),
        "kdf": {"opslimit": MIN.opslimit, "memlimit": MIN.memlimit},
    }


def test_show_text_and_json(home: Path, cli: Cli) -> None:
    cli("keys", "new", "alice")
    keypair = Keystore(home).load("alice", PASS)
    curve = base64.b64encode(keypair.curve_public()).decode()
    text = cli("keys", "show", "alice")
    assert text.code == 0, text
    for fragment in (keypair.id, curve, str(home / "keys" / "alice.json"), "curve25519"):
        assert fragment in text.out
    shown = cli("keys", "show", "alice", "--json")
    data = json.loads(shown.out)
    assert (data["id"], data["curve_public"]) == (keypair.id, curve)


def test_show_needs_no_passphrase(home: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("keys", "new", "alice")
    monkeypatch.delenv("CHAINMAIL_PASSPHRASE")
    assert cli("keys", "show", "alice").code == 0
    assert cli("keys", "list").code == 0


def test_list(home: Path, cli: Cli) -> None:
    empty = cli("keys", "list")
    assert empty.code == 0
    assert "No keys in" in empty.out
    assert json.loads(cli("keys", "list", "--json").out) == []
    cli("keys", "new", "bob")
    cli("keys", "new", "alice")
    ids = dict(Keystore(home).list())
    result = cli("keys", "list")
    lines = result.out.splitlines()
    assert [line.split() for line in lines] == [["alice", ids["alice"]], ["bob", ids["bob"]]]
    assert json.loads(cli("keys", "list", "--json").out) == [
        {"name": "alice", "id": ids["alice"]},
        {"name": "bob", "id": ids["bob"]},
    ]


@pytest.mark.parametrize("folder", ["work [old]", "[/x]"])
def test_list_names_an_empty_home_as_it_is(tmp_path: Path, cli: Cli, folder: str) -> None:
    # The path went out as console markup: "[old]" vanished from it (another
    # path than the real one), "[/x]" was a MarkupError traceback.
    home = tmp_path / folder
    empty = cli("keys", "list", "--home", str(home))
    assert empty.code == 0, empty
    assert f"No keys in {home / 'keys'}." in empty.out


def test_a_broken_key_file_does_not_hide_the_others(home: Path, cli: Cli) -> None:
    cli("keys", "new", "alice")
    (home / "keys" / "broken.json").write_text("garbage")
    ids = {info.name: info.id for info in Keystore(home).survey()[0]}
    result = cli("keys", "list")
    assert result.code == 1
    assert [line.split() for line in result.out.splitlines()] == [["alice", ids["alice"]]]
    (problem,) = result.err.strip().splitlines()
    assert problem.startswith("chainmail: keystore: ") and "broken.json" in problem
    as_json = cli("keys", "list", "--json")
    assert as_json.code == 1 and json.loads(as_json.out) == [{"name": "alice", "id": ids["alice"]}]


def test_home_option_overrides_env(home: Path, tmp_path: Path, cli: Cli) -> None:
    other = tmp_path / "other"
    assert cli("keys", "new", "alice", "--home", str(other)).code == 0
    assert [n for n, _ in Keystore(other).list()] == ["alice"]
    assert Keystore(home).list() == []
    assert cli("keys", "show", "alice", "--home", str(other)).code == 0


def test_force_replaces(home: Path, cli: Cli) -> None:
    cli("keys", "new", "alice")
    before = Keystore(home).show("alice").id
    assert cli("keys", "new", "alice", "--force").code == 0
    assert Keystore(home).show("alice").id != before


def test_kdf_moderate_option(home: Path, cli: Cli) -> None:
    result = cli("keys", "new", "alice", "--kdf", "moderate", "--json")
    assert result.code == 0, result
    assert json.loads(result.out)["kdf"] == {"opslimit": 3, "memlimit": 256 * 1024 * 1024}


# -- import ----------------------------------------------------------------------------------


def test_import_ssb_keys_file(home: Path, tmp_path: Path, cli: Cli) -> None:
    keypair = Keypair.generate()
    secret = tmp_path / "secret"
    secret.write_text(
        "# WARNING: Never show this to anyone.\n#\n"
        + json.dumps(keypair.to_ssb_secret(), indent=2)
        + f"\n#\n#   {keypair.id}"
    )
    result = cli("keys", "import", "alice", "--file", str(secret))
    assert result.code == 0, result
    assert "Imported key 'alice'" in result.out
    assert keypair.id in result.out
    assert Keystore(home).load("alice", PASS) == keypair


def test_import_from_a_pipe_reads_it_once(home: Path, tmp_path: Path) -> None:
    keypair = Keypair.generate()
    done = subprocess.run(
        [sys.executable, "-m", "chainmail", "keys", "import", "piped", "--file", "/dev/stdin"],
        input=json.dumps(keypair.to_ssb_secret()),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CHAINMAIL_HOME": str(home), "CHAINMAIL_PASSPHRASE": "pw"},
    )
    assert done.returncode == 0, done.stderr
    assert Keystore(home).list() == [("piped", keypair.id)]


def test_import_bad_file(home: Path, tmp_path: Path, cli: Cli) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"curve": "ed25519"}')
    one_line_error(cli("keys", "import", "alice", "--file", str(bad)), "bad.json", "'private'")
    one_line_error(cli("keys", "import", "alice", "--file", str(tmp_path / "nope")), "no such file")
    assert Keystore(home).list() == []


# -- errors: one line, exit 1 ----------------------------------------------------------------


def test_duplicate_name(home: Path, cli: Cli) -> None:
    cli("keys", "new", "alice")
    one_line_error(cli("keys", "new", "alice"), "already exists", "--force")


@pytest.mark.parametrize("name", ["a/b", "../x", "x" * 65, "a b"])
def test_bad_name(home: Path, cli: Cli, name: str) -> None:
    one_line_error(cli("keys", "new", name), "invalid key name")
    one_line_error(cli("keys", "show", name), "invalid key name")


def test_bad_name_is_reported_before_asking_for_a_passphrase(
    home: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHAINMAIL_PASSPHRASE")
    one_line_error(cli("keys", "new", "a/b"), "invalid key name")


def test_existing_name_is_reported_before_asking_for_a_passphrase(
    home: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("keys", "new", "alice")
    monkeypatch.delenv("CHAINMAIL_PASSPHRASE")
    one_line_error(cli("keys", "new", "alice"), "already exists")
    one_line_error(
        cli("keys", "import", "alice", "--file", str(home / "keys" / "alice.json")),
        "already exists",
    )


def test_missing_import_file_is_reported_before_asking_for_a_passphrase(
    home: Path, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAINMAIL_PASSPHRASE")
    one_line_error(cli("keys", "import", "bob", "--file", str(tmp_path / "nope")), "no such file")


def test_show_missing(home: Path, cli: Cli) -> None:
    one_line_error(cli("keys", "show", "ghost"), "no key named 'ghost'")


def test_no_passphrase_and_no_terminal(
    home: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAINMAIL_PASSPHRASE")
    one_line_error(cli("keys", "new", "alice"), "set CHAINMAIL_PASSPHRASE")
    assert Keystore(home).list() == []


def test_empty_passphrase_env(home: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAINMAIL_PASSPHRASE", "")
    one_line_error(cli("keys", "new", "alice"), "CHAINMAIL_PASSPHRASE is set but empty")


def test_missing_argument_is_a_usage_error(home: Path, cli: Cli) -> None:
    result = cli("keys", "new")
    assert result.code == 2
    assert "Missing argument" in result.err


# -- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("keys", "--help"), "CHAINMAIL_PASSPHRASE"),
        (("keys", "new", "--help"), "Create a new identity"),
        (("keys", "import", "--help"), "Import an existing identity"),
        (("keys", "list", "--help"), "List stored identities"),
        (("keys", "show", "--help"), "curve25519"),
    ],
)
def test_help(cli: Cli, args: tuple[str, ...], fragment: str) -> None:
    result = cli(*args)
    assert result.code == 0
    assert fragment in " ".join(result.out.split())


# -- typer's test runner on the bare app -------------------------------------------------------


def test_cli_runner_on_app(home: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "new", "alice", "--json"])
    assert created.exit_code == 0, created.output
    shown = runner.invoke(app, ["keys", "show", "alice", "--json"])
    assert json.loads(shown.stdout)["id"] == json.loads(created.stdout)["id"]
    # Without main(), a chainmail error surfaces as the exception itself.
    again = runner.invoke(app, ["keys", "new", "alice"])
    assert again.exit_code == 1
    assert isinstance(again.exception, KeystoreError)


# -- the real console script, as a new user would run it ---------------------------------------


def test_console_script_new_and_show(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("chainmail")
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    env = {
        **os.environ,
        "CHAINMAIL_HOME": str(tmp_path / "home"),
        "CHAINMAIL_PASSPHRASE": PASS,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    created = run("keys", "new", "alice")
    assert created.returncode == 0, created.stderr
    assert created.stderr == ""
    shown = run("keys", "show", "alice")
    assert shown.returncode == 0, shown.stderr
    fid = Keystore(tmp_path / "home").show("alice").id
    assert fid in created.stdout
    assert fid in shown.stdout
    # The default (INTERACTIVE) cost, end to end.
    assert Keystore(tmp_path / "home").load("alice", PASS).id == fid
    assert json.loads(run("keys", "show", "alice", "--json").stdout)["kdf"] == {
        "opslimit": 2,
        "memlimit": 64 * 1024 * 1024,
    }
    again = run("keys", "new", "alice")
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.startswith("chainmail: keystore: key 'alice' already exists")
    assert again.stderr.count("\n") == 1


def _keys_list_into(stdout: IO[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``chainmail keys list`` in a subprocess, its output into ``stdout``."""
    return subprocess.run(
        [sys.executable, "-m", "chainmail", "keys", "list"],
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_output_that_cannot_be_written_is_one_line_and_exit_1(
    home: Path, tmp_path: Path
) -> None:
    # A subprocess: the failing stream must be the real stdout, a full device.
    env = {**os.environ, "CHAINMAIL_HOME": str(home), "CHAINMAIL_PASSPHRASE": PASS}
    subprocess.run([sys.executable, "-m", "chainmail", "keys", "new", "alice"], env=env, check=True)
    with open("/dev/full", "w") as full:
        done = _keys_list_into(full, env)
    assert done.returncode == 1
    assert done.stderr == "chainmail: storage: No space left on device\n"


def test_a_reader_that_goes_away_ends_the_command_quietly(home: Path) -> None:
    env = {**os.environ, "CHAINMAIL_HOME": str(home), "CHAINMAIL_PASSPHRASE": PASS}
    for name in ("alice", "bob"):
        subprocess.run(
            [sys.executable, "-m", "chainmail", "keys", "new", name], env=env, check=True
        )
    read, write = os.pipe()
    os.close(read)  # nobody reads: the first write fails with EPIPE
    with os.fdopen(write, "w") as gone:
        done = _keys_list_into(gone, env)
    assert (done.returncode, done.stderr) == (1, "")  # no traceback, no message


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["blocks", "--interval", "-1"], "Invalid value for '--interval'"),
        (["verify", "block"], "Missing argument 'H'"),
        (["nosuchcmd"], "No such command 'nosuchcmd'"),
        (["keys", "show"], "Missing argument"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(cli: Cli, args: list[str], said: str) -> None:
    result = cli(*args)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("chainmail: usage: ") and said in result.err, result.err
    assert result.err.count("\n") == 1 and "--help`)" in result.err


def test_no_arguments_still_show_the_help(cli: Cli) -> None:
    result = cli()
    assert result.code == 2 and "Usage: " in result.out and "Commands" in result.out


@pytest.mark.parametrize("after", [0.05, 0.2])
def test_ctrl_c_while_the_command_line_starts_is_exit_130_without_a_traceback(
    home: Path, after: float
) -> None:
    import signal
    import time

    script = str(Path(sys.executable).parent / "chainmail")
    proc = subprocess.Popen(
        [script, "keys", "list"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "CHAINMAIL_HOME": str(home)},
    )
    time.sleep(after)  # the imports take most of a short command's time
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130), (proc.returncode, err)
