"""The installed distribution has one import package, ``dplbench``: the repository's methods/, protocols/ and
results/reference/ are installed under it, so a user's own folders of the same names never shadow them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("dplbench", "methods", "protocols", "results/reference", "pyproject.toml", "README.md")


def _plant_user_packages(folder: Path) -> None:
    """A research folder with its own ``methods`` and ``protocols`` packages (which dplbench must ignore)."""
    for name in ("methods", "protocols"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text("raise RuntimeError('the user package was imported')\n")


def test_ls_methods_ignores_a_users_methods_and_protocols_packages(tmp_path):
    _plant_user_packages(tmp_path)
    code = "import sys; from dplbench.cli import main; sys.exit(main(sys.argv[1:]))"
    for kind in ("methods", "protocols"):
        out = subprocess.run([sys.executable, "-c", code, "ls", kind], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        listed = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
        from dplbench.catalog import METHODS, PROTOCOLS

        expected = set((METHODS if kind == "methods" else PROTOCOLS).list())
        assert expected and expected <= listed, (kind, out.stdout)


def test_wheel_ships_reference_numbers_and_no_top_level_user_packages(tmp_path):
    src = tmp_path / "src"
    for name in SHIPPED:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("dplbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dplbench/reference/reference_numbers.csv" in names
    assert "dplbench/protocols/base2novel.yaml" in names and "dplbench/protocols/sweeps/drople_ablation.yaml" in names
    assert "dplbench/methods/coop.py" in names
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"dplbench"}, top_level

    # installed outside the clone and used from an unrelated folder, the published rows are still there
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    user = tmp_path / "user"
    user.mkdir()
    _plant_user_packages(user)
    code = ("import dplbench, sys; from dplbench.report.reference import load_reference; "
            "ref = load_reference(); print(dplbench.__file__); print(len(ref.rows), ref.path)")
    out = subprocess.run([sys.executable, "-c", code], cwd=user, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    package_file, counts = out.stdout.splitlines()
    assert package_file.startswith(str(site))
    rows, path = counts.split(maxsplit=1)
    assert int(rows) > 300 and path.startswith(str(site))
