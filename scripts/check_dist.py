"""Inspect a built sdist and wheel before anything is installed from them.

Run by scripts/check_wheel.sh with the development venv (it needs ``packaging`` and
``trove-classifiers``). Every check prints one line; the first failure exits with status 1.
What this catches that an editable install never would: a module or data file of the
package missing from the wheel, metadata a package index rejects or shows wrongly, and a
version that disagrees between the file name, the metadata and ``_version.py``.

    python scripts/check_dist.py --source-version   # print the version from _version.py
    python scripts/check_dist.py DIST_DIR           # check the one sdist + wheel in DIST_DIR
"""

from __future__ import annotations

import argparse
import ast
import configparser
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from packaging.metadata import Metadata
from trove_classifiers import classifiers as known_classifiers

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "modelfetch"
PACKAGE_DIR = ROOT / "src" / PACKAGE
LICENSE = "Apache-2.0"
ENTRY_POINT = "modelfetch.launcher:main"  # answers cache hits, then cli.main
REQUIRED_CLASSIFIERS = (
    "Operating System :: POSIX :: Linux",
    "Typing :: Typed",
    *(f"Programming Language :: Python :: 3.{minor}" for minor in range(10, 14)),
)
# Top-level files a source distribution must carry besides the package itself.
SDIST_FILES = ("PKG-INFO", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md")


class CheckFailed(Exception):
    pass


def ok(message: str) -> None:
    print(f"check_dist: ok: {message}", flush=True)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def source_version() -> str:
    """The version as written in _version.py, read without importing the package."""
    tree = ast.parse((PACKAGE_DIR / "_version.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise CheckFailed(f"no __version__ = '...' assignment in {PACKAGE_DIR / '_version.py'}")


def _git_listed(directory: Path) -> list[Path] | None:
    """Files git would commit under ``directory`` (tracked or new, not ignored), so an
    editor's swap file or a build leftover is not mistaken for part of the package."""
    try:
        done = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."],
            cwd=directory,
            capture_output=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an unpacked sdist, say)
    return [directory / name for name in done.stdout.decode().split("\0") if name]


def package_files() -> set[str]:
    """Every file of the package in the source tree, as paths relative to src/."""
    listed = _git_listed(PACKAGE_DIR)
    candidates = listed if listed is not None else list(PACKAGE_DIR.rglob("*"))
    files = set()
    for path in candidates:
        if path.name.startswith(".") or path.name.endswith("~"):
            continue  # editor swap and backup files
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.add(path.relative_to(PACKAGE_DIR.parent).as_posix())
    require(bool(files), f"no package files found under {PACKAGE_DIR}")
    return files


def find_one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    require(len(found) == 1, f"expected one {pattern} in {dist}, found {len(found)}")
    return found[0]


def check_metadata(raw: bytes, version: str, where: str) -> Metadata:
    try:
        meta = Metadata.from_email(raw, validate=True)
    except Exception as exc:  # InvalidMetadata, or an ExceptionGroup of them
        reasons = "; ".join(str(e) for e in getattr(exc, "exceptions", [exc]))
        raise CheckFailed(f"{where}: invalid core metadata: {reasons}") from None
    require(meta.name == PACKAGE, f"{where}: Name is {meta.name!r}")
    require(str(meta.version) == version, f"{where}: Version {meta.version} != {version}")
    require(
        str(meta.requires_python) == ">=3.10",
        f"{where}: Requires-Python is {meta.requires_python}",
    )
    require(
        str(meta.license_expression) == LICENSE,
        f"{where}: License-Expression is {meta.license_expression!r}, want {LICENSE}",
    )
    require(
        meta.description_content_type == "text/markdown",
        f"{where}: Description-Content-Type is {meta.description_content_type!r}",
    )
    require(
        bool(meta.description and "# modelfetch" in meta.description),
        f"{where}: the long description is not README.md",
    )
    require(bool(meta.summary), f"{where}: no Summary")
    require(bool(meta.keywords), f"{where}: no Keywords")
    require(bool(meta.project_urls), f"{where}: no Project-URL")
    require(bool(meta.author_email or meta.maintainer_email), f"{where}: no author")
    classifiers = meta.classifiers or []
    unknown = [c for c in classifiers if c not in known_classifiers]
    require(not unknown, f"{where}: classifiers a package index rejects: {unknown}")
    missing = [c for c in REQUIRED_CLASSIFIERS if c not in classifiers]
    require(not missing, f"{where}: missing classifiers {missing}")
    license_classifiers = [c for c in classifiers if c.startswith("License ::")]
    require(
        not license_classifiers,
        f"{where}: License classifiers conflict with License-Expression: {license_classifiers}",
    )
    return meta


def check_wheel(wheel: Path, version: str) -> None:
    want = f"{PACKAGE}-{version}-py3-none-any.whl"
    require(wheel.name == want, f"wheel is named {wheel.name}, want {want}")
    info = f"{PACKAGE}-{version}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_raw = zf.read(f"{info}/METADATA")
        entry_points = zf.read(f"{info}/entry_points.txt").decode("utf-8")
    ok(f"built {wheel.name} ({wheel.stat().st_size} bytes)")

    missing = sorted(package_files() - names)
    require(not missing, f"files of src/{PACKAGE} missing from the wheel: {missing}")
    require(f"{PACKAGE}/py.typed" in names, "py.typed is missing from the wheel")
    ok(f"the wheel carries every file of src/{PACKAGE}, py.typed included")

    strays = sorted(
        n for n in names if PurePosixPath(n).parts[0] not in (PACKAGE, info) or ".pyc" in n
    )
    require(not strays, f"unexpected files in the wheel: {strays}")
    require(f"{info}/licenses/LICENSE" in names, "the LICENSE file is missing from the wheel")

    check_metadata(meta_raw, version, "wheel")
    ok(f"wheel metadata: version {version}, license {LICENSE}, classifiers known to PyPI")

    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    scripts = dict(parser["console_scripts"]) if parser.has_section("console_scripts") else {}
    require(
        scripts.get(PACKAGE) == ENTRY_POINT,
        f"console script {PACKAGE!r} is {scripts.get(PACKAGE)!r}, want {ENTRY_POINT}",
    )
    ok(f"console script: {PACKAGE} = {ENTRY_POINT}")


def check_sdist(sdist: Path, version: str) -> None:
    want = f"{PACKAGE}-{version}.tar.gz"
    require(sdist.name == want, f"sdist is named {sdist.name}, want {want}")
    top = f"{PACKAGE}-{version}"
    with tarfile.open(sdist) as tf:
        names = set(tf.getnames())
        missing = [f for f in SDIST_FILES if f"{top}/{f}" not in names]
        missing += sorted(f for f in package_files() if f"{top}/src/{f}" not in names)
        require(not missing, f"files missing from the sdist: {missing}")
        pkg_info = tf.extractfile(f"{top}/PKG-INFO")
        if pkg_info is None:
            raise CheckFailed("the sdist's PKG-INFO is not a regular file")
        check_metadata(pkg_info.read(), version, "sdist PKG-INFO")
    ok(f"built {sdist.name}: package, README, LICENSE, CHANGELOG and valid PKG-INFO")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist", nargs="?", type=Path, help="directory with the built files")
    parser.add_argument("--source-version", action="store_true", help="print the version")
    args = parser.parse_args(argv)
    try:
        version = source_version()
        if args.source_version:
            print(version)
            return 0
        if args.dist is None:
            parser.error("DIST_DIR is required")
        check_sdist(find_one(args.dist, "*.tar.gz"), version)
        check_wheel(find_one(args.dist, "*.whl"), version)
    except CheckFailed as exc:
        print(f"check_dist: FAIL: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
