"""`tracecraft install`: a private compiled copy and a launcher that runs Python isolated (-I -S).

Installs run in this process through tracecraft.main() where a process proves nothing more; the
launcher always runs as a real process, as a user's shell would run it."""

import importlib.util
import json
import os
import subprocess
import sys

import tracecraft
from conftest import REPO, clean_env

PYTHON = os.path.realpath(sys.executable)


def install(capsys, prefix, *extra):
    """(exit code, what --json printed, stderr) of an install in this process."""
    code = tracecraft.main(["install", "--prefix", str(prefix), "--json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def launch(prefix, *args, env, cwd=None, stdin=None):
    return subprocess.run([str(prefix / "bin" / "tracecraft"), *args], env=env, cwd=cwd,
                          input=stdin, capture_output=True, text=True, timeout=60)


def installed_files(prefix):
    return sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*"))


def test_install_from_a_read_only_copy_runs_isolated(tmp_path):
    """`python3 tracecraft.py install` from a read-only directory; the launcher then runs the same
    interpreter with -I -S: a poisoned PYTHONPATH (and current directory) shadowing tracecraft and
    json is never imported, and memory set/get work on a local store."""
    copy = tmp_path / "readonly"
    copy.mkdir()
    (copy / "tracecraft.py").write_bytes((REPO / "tracecraft.py").read_bytes())
    copy.chmod(0o555)
    prefix, env = tmp_path / "prefix", clean_env(tmp_path)
    done = subprocess.run([sys.executable, str(copy / "tracecraft.py"), "install", "--prefix",
                           str(prefix), "--json"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    launcher = prefix / "bin" / "tracecraft"
    assert result == {"installed": str(prefix / "lib/tracecraft/tracecraft.py"),
                      "bytecode": str(prefix / "lib/tracecraft/__pycache__/"
                                      f"tracecraft.{sys.implementation.cache_tag}.pyc"),
                      "launcher": str(launcher), "python": PYTHON,
                      "version": tracecraft.__version__, "source": True, "on_path": False}
    assert f"export PATH={prefix / 'bin'}:\"$PATH\"" in done.stderr   # the line to add
    assert launcher.read_text().splitlines()[0] == f"#!{PYTHON} -IS"
    assert os.listdir(copy) == ["tracecraft.py"]   # nothing written beside the copy

    pyc = prefix / "lib/tracecraft/__pycache__" / os.path.basename(result["bytecode"])
    compiled = pyc.read_bytes(), pyc.stat().st_mtime_ns
    poison = tmp_path / "poison"
    poison.mkdir()
    for name in ("tracecraft.py", "json.py"):
        (poison / name).write_text("raise SystemExit('poisoned: imported from PYTHONPATH')\n")
    env = dict(env, PYTHONPATH=str(poison), PYTHONSTARTUP=str(poison / "json.py"))
    version = launch(prefix, "--version", env=env, cwd=poison)
    assert version.returncode == 0 and version.stdout == f"tracecraft {tracecraft.__version__}\n"
    work = tmp_path / "work"
    work.mkdir()
    assert launch(prefix, "init", "--project", "p", "--agent", "a", "--root",
                  str(tmp_path / "store"), env=env, cwd=work).returncode == 0
    assert launch(prefix, "memory", "set", "k", "41", env=env, cwd=work).returncode == 0
    got = launch(prefix, "memory", "get", "k", env=env, cwd=work)
    assert (got.returncode, got.stdout, got.stderr) == (0, "41\n", "")
    # The bytecode install wrote was good: Python loaded it as it was, without compiling again.
    assert (pyc.read_bytes(), pyc.stat().st_mtime_ns) == compiled

    # Another Python's bytecode (here: a corrupted magic number) beside the source: recompiled.
    pyc.write_bytes(b"\0\0\r\n" + pyc.read_bytes()[4:])
    again = launch(prefix, "memory", "get", "k", env=env, cwd=work)
    assert (again.returncode, again.stdout) == (0, "41\n")
    assert pyc.read_bytes()[:4] == importlib.util.MAGIC_NUMBER   # and cached again


def test_install_from_standard_input_has_bytecode_only(tmp_path, capsys):
    """`curl ... | python3 - install`: the source is gone, the running code is installed as a
    .pyc; a .pyc the interpreter cannot load says to reinstall, without a traceback."""
    prefix, env = tmp_path / "prefix", clean_env(tmp_path)
    done = subprocess.run([sys.executable, "-", "install", "--prefix", str(prefix)], env=env,
                          input=(REPO / "tracecraft.py").read_bytes(), capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"bytecode only" in done.stdout
    assert installed_files(prefix) == ["bin", "bin/tracecraft", "lib", "lib/tracecraft",
                                       "lib/tracecraft/tracecraft.pyc"]
    work = tmp_path / "work"
    work.mkdir()
    assert launch(prefix, "init", "--project", "p", "--agent", "a", "--root",
                  str(tmp_path / "store"), env=env, cwd=work).returncode == 0
    sent = launch(prefix, "send", "b", "-", env=env, cwd=work, stdin="from a bytecode install")
    assert sent.returncode == 0, sent.stderr
    inbox = launch(prefix, "inbox", "--json", env=dict(env, TRACECRAFT_AGENT="b"), cwd=work)
    assert [m["text"] for m in json.loads(inbox.stdout)["messages"]] == ["from a bytecode install"]

    # The installed bytecode reinstalls itself (into another prefix) ...
    other = tmp_path / "other"
    assert launch(prefix, "install", "--prefix", str(other), env=env).returncode == 0
    assert launch(other, "--version", env=env).returncode == 0
    # ... and the bytecode of another Python (a corrupted magic number) says what to do.
    pyc = prefix / "lib/tracecraft/tracecraft.pyc"
    pyc.write_bytes(b"\0\0\r\n" + pyc.read_bytes()[4:])
    broken = launch(prefix, "memory", "get", "k", env=env, cwd=work)
    assert broken.returncode == 4 and "Traceback" not in broken.stderr
    assert "does not load in this Python (bad magic number" in broken.stderr
    assert "reinstall: python3 tracecraft.py install" in broken.stderr

    # Installing from the source over it puts the source back and drops the bare bytecode.
    assert install(capsys, prefix)[0] == 0
    assert installed_files(prefix) == [
        "bin", "bin/tracecraft", "lib", "lib/tracecraft", "lib/tracecraft/__pycache__",
        f"lib/tracecraft/__pycache__/tracecraft.{sys.implementation.cache_tag}.pyc",
        "lib/tracecraft/tracecraft.py"]


def test_reinstall_replaces_its_own_files_and_nothing_else(tmp_path, capsys):
    prefix = tmp_path / "prefix"
    assert install(capsys, prefix)[0] == 0
    files = installed_files(prefix)
    launcher = prefix / "bin" / "tracecraft"
    before = launcher.read_bytes()
    assert install(capsys, prefix)[0] == 0   # again: the same files, the same launcher
    assert installed_files(prefix) == files and launcher.read_bytes() == before

    # A `tracecraft` that is not the launcher (pip's entry point) is refused without --force.
    pip_script = "#!/usr/bin/python3\nfrom tracecraft import main\nmain()\n"
    launcher.write_text(pip_script)
    code, _, err = install(capsys, prefix)
    assert code == 1 and "is not tracecraft's launcher" in err
    assert launcher.read_text() == pip_script
    # A symbolic link planted there is refused too; --force replaces the link, not its target.
    victim = tmp_path / "victim"
    victim.write_text("precious")
    launcher.unlink()
    launcher.symlink_to(victim)
    assert install(capsys, prefix)[0] == 1
    assert install(capsys, prefix, "--force")[0] == 0
    assert not launcher.is_symlink() and launcher.read_bytes() == before
    assert victim.read_text() == "precious"

    # A link planted at the private directory is never written through.
    elsewhere, linked = tmp_path / "elsewhere", tmp_path / "linked"
    elsewhere.mkdir()
    (linked / "lib").mkdir(parents=True)
    (linked / "lib" / "tracecraft").symlink_to(elsewhere)
    code, _, err = install(capsys, linked)
    assert code == 2 and "is a symbolic link or not a directory: refused" in err
    assert os.listdir(elsewhere) == [] and not (linked / "bin" / "tracecraft").exists()


def test_uninstall_removes_exactly_what_install_wrote(tmp_path, capsys):
    prefix = tmp_path / "prefix"
    assert install(capsys, prefix)[0] == 0
    lib = prefix / "lib" / "tracecraft"
    (lib / "notes.txt").write_text("the user's own")
    assert tracecraft.main(["uninstall", "--prefix", str(prefix), "--json"]) == 0
    captured = capsys.readouterr()
    removed = json.loads(captured.out)["removed"]
    assert removed == [str(prefix / "bin/tracecraft"), str(lib / "tracecraft.py"),
                       str(lib / "__pycache__" /
                           f"tracecraft.{sys.implementation.cache_tag}.pyc"),
                       str(lib / "__pycache__")]
    assert f"{lib} holds files tracecraft did not write" in captured.err
    assert installed_files(prefix) == ["bin", "lib", "lib/tracecraft", "lib/tracecraft/notes.txt"]
    assert tracecraft.main(["uninstall", "--prefix", str(prefix)]) == 1   # nothing left of it
    assert "tracecraft is not installed in" in capsys.readouterr().err

    # Someone else's `tracecraft` in the bin directory is left alone.
    (prefix / "bin" / "tracecraft").write_text("#!/bin/sh\necho pip\n")
    (lib / "tracecraft.py").write_text("print('not tracecraft')\n")   # and a file of that name
    assert tracecraft.main(["uninstall", "--prefix", str(prefix)]) == 1
    assert (prefix / "bin" / "tracecraft").read_text() == "#!/bin/sh\necho pip\n"
    assert (lib / "tracecraft.py").exists()
    assert "is not a copy of tracecraft: left alone" in capsys.readouterr().err
