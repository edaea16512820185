"""A wheel built from the repository, installed into a fresh virtualenv outside it, migrates and
decides a submission on the embedded default: policies/ and migrations/ ship as package data,
and so do the console's templates and assets."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
from PIL import Image

from tests.support.paths import REPO
from tests.support.processes import embedded_env, free_port, stop_session
from tests.support.waiting import wait_until

SOURCES = ("moderation", "workers", "policies", "migrations", "pyproject.toml", "setup.py", "README.md", "LICENSE")


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def test_wheel_outside_the_repository_migrates_and_decides(tmp_path: Path) -> None:
    # Nothing of the checkout may leak in: no PYTHONPATH (pip would find its egg-info and install
    # nothing), no settings of the test session (the embedded default must be what runs).
    env = embedded_env()
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:  # a copy, so that the build writes nothing into the checkout
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, src / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(src),
        ],
        env=env,
    )
    (wheel,) = tmp_path.glob("moderation-*.whl")
    shutil.rmtree(src)  # nothing of the sources is left to import from

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=env)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)], env=env)
    # Dependencies come from this interpreter's site-packages (a plain path: its .pth files, such
    # as the editable install of the checkout, are not processed).
    site = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).stdout.strip()
    )
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    run = tmp_path / "run"
    run.mkdir()
    where = _run(
        [str(py), "-c", "import moderation, workers; print(moderation.__file__, workers.__file__)"], cwd=run, env=env
    )
    assert all(p.startswith(str(site)) for p in where.stdout.split()), where.stdout
    _run([str(venv / "bin" / "moderation"), "migrate"], cwd=run, env=env)
    assert (run / "var" / "moderation.db").exists()

    port, flower = free_port(), free_port()
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen(
        [str(venv / "bin" / "moderation"), "up", "--port", str(port), "--flower-port", str(flower)],
        cwd=run,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def ready() -> bool:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            return False

        wait_until(ready, 120, 0.5, "the API ready", detail=(tmp_path / "up.log").read_text)
        image = run / "upload.png"
        buf = io.BytesIO()
        Image.radial_gradient("L").convert("RGB").save(buf, "PNG")
        image.write_bytes(buf.getvalue())
        submitted = _run(
            [str(venv / "bin" / "moderation"), "submit", str(image), "--wait", "--policy", "hash-only"],
            cwd=run,
            env={**env, "MODERATION_URL": f"http://127.0.0.1:{port}"},
        )
        assert '"status": "decided"' in submitted.stdout and '"action": "allow"' in submitted.stdout, submitted.stdout
        assert '"id": "hash-only"' in submitted.stdout
        # The console's templates and assets, and the docs' assets, come with the installed package.
        sign_in = httpx.get(f"http://127.0.0.1:{port}/console/sign-in", timeout=10)
        assert sign_in.status_code == 200 and "API key" in sign_in.text
        assert httpx.get(f"http://127.0.0.1:{port}/console/static/console.css", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=10).status_code == 200
    finally:
        stop_session(up, 30)
        log.close()
