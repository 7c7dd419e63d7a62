"""tracecraft promises Python 3.9+: the seed scenario, through the command line, on the local
store and SeaweedFS, on every other CPython from 3.9 to 3.13 this machine has (pyenv's, or on
PATH).  The interpreters run in parallel: each is a sequence of short processes."""
import glob
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import settings_for
from scenario import run_seed_scenario


def other_pythons():
    """{"3.9": path, ...} for each 3.9-3.13 found, but the one running the tests."""
    found = {}
    for minor in range(9, 14):
        version = f"3.{minor}"
        if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
            continue
        candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/"
                                                         "python3")))
        path = candidates[-1] if candidates else shutil.which(f"python{version}")
        if path and subprocess.run([path, "-c", "pass"], capture_output=True).returncode == 0:
            found[version] = path
    return found


PYTHONS = other_pythons()


@pytest.mark.skipif(not PYTHONS, reason="no other CPython 3.9-3.13 on this machine")
def test_the_seed_scenario_on_every_python(request, tmp_path, bucket_name):
    runs = [(version, kind) for version in PYTHONS for kind in ("local", "seaweed")]
    settings = {kind: settings_for(request, kind, tmp_path / "store", f"{bucket_name}-{i}")
                for i, kind in enumerate(("local", "seaweed"))}
    from conftest import _open
    _open(settings["seaweed"]).close()

    def run(version, kind):
        where = tmp_path / f"{version}-{kind}"
        where.mkdir()
        bucket = dict(settings[kind], bucket=f"{settings[kind]['bucket']}-{version[2:]}")
        if kind == "local":
            bucket["root"] = str(where / "store")
        run_seed_scenario(bucket, where, python=PYTHONS[version])
        return version, kind
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda run_: run(*run_), runs))
    print(f"\nseed scenario passed on Python {', '.join(PYTHONS)} (local store and SeaweedFS)")
    assert sorted(done) == sorted(runs)
