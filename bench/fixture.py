"""The benchmark fixture: a Puppet control repository and its module repositories.

    python -m bench.fixture OUT [--envs 20] [--modules 15] [--files-per-module 40]

Builds, with nothing but the ``git`` command (so the fixture never depends
on the code it measures)::

    OUT/modules/<mod>.git     bare module repositories: branch ``main``,
                              tags ``v1.0.0`` and ``v1.1.0``
    OUT/control.git           bare control repository, one branch per
                              environment (production, development, testing,
                              staging, feature_004, ...), each with a
                              Puppetfile naming every module by ``:tag``,
                              ``:branch`` or ``:commit``, plus roles,
                              profiles and hiera data
    OUT/r10k.yaml, OUT/g10k.yaml
                              configs that deploy OUT/control.git into
                              OUT/<tool>/environments

This is the shape of ``../shared/bench/make_control_repo.py``, so figures
measured on either compare; it is built with ``git fast-import`` instead of
one ``git commit`` per file set, which makes a 1,000-environment fixture a
matter of seconds. The content is deterministic for given arguments.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

#: Fixed identity and dates: the same arguments always give the same commits.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}
_WHEN = "1767225600 +0000"  # 2026-01-01T00:00:00Z
_NAMED = ("production", "development", "testing", "staging")


def environment_names(envs: int) -> list[str]:
    """Return the branch names of a fixture with ``envs`` environments."""
    return [_NAMED[i] if i < len(_NAMED) else f"feature_{i:03d}" for i in range(envs)]


class _Stream:
    """Write a ``git fast-import`` stream: blobs inline, one commit at a time."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.mark = 0

    def commit(
        self,
        ref: str,
        message: str,
        files: Mapping[str, str],
        *,
        parent: int | None = None,
        replace_all: bool = True,
    ) -> int:
        """Add a commit on ``ref`` with ``files``; return its mark."""
        self.mark += 1
        out = self.parts
        data = message.encode()
        out.append(f"commit {ref}\nmark :{self.mark}\n".encode())
        out.append(f"author bench <bench@example.invalid> {_WHEN}\n".encode())
        out.append(f"committer bench <bench@example.invalid> {_WHEN}\n".encode())
        out.append(f"data {len(data)}\n".encode() + data + b"\n")
        if parent is not None:
            out.append(f"from :{parent}\n".encode())
        if replace_all:
            out.append(b"deleteall\n")
        for path, text in sorted(files.items()):
            body = text.encode()
            out.append(f"M 100644 inline {path}\ndata {len(body)}\n".encode() + body + b"\n")
        out.append(b"\n")
        return self.mark

    def tag(self, name: str, mark: int) -> None:
        """Point a lightweight tag at a commit."""
        self.parts.append(f"reset refs/tags/{name}\nfrom :{mark}\n\n".encode())

    def run(self, repo: Path) -> dict[int, str]:
        """Feed the stream into bare ``repo``; return mark → commit id."""
        marks = repo / "marks"
        subprocess.run(
            ["git", "--git-dir", str(repo), "fast-import", "--quiet", f"--export-marks={marks}"],
            input=b"".join(self.parts),
            check=True,
            capture_output=True,
            env={**os.environ, **GIT_ENV},
        )
        found = {}
        for line in marks.read_text().splitlines():
            mark, commit = line.split()
            found[int(mark[1:])] = commit
        marks.unlink()
        return found


def _bare(path: Path, head: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["git", "init", "-q", "--bare", "-b", head, str(path)],
        check=True,
        env={**os.environ, **GIT_ENV},
    )


def module_files(name: str, files: int) -> dict[str, str]:
    """Return the files of version 1.0.0 of module ``name``."""
    found = {
        "metadata.json": (
            f'{{"name": "bench-{name}", "version": "1.0.0", "author": "bench", '
            f'"license": "Apache-2.0", "summary": "{name}", "dependencies": []}}\n'
        ),
        "manifests/init.pp": f"class {name} (\n  String $ensure = 'present',\n) {{\n}}\n",
    }
    for index in range(files):
        found[f"manifests/part{index}.pp"] = (
            f"class {name}::part{index} {{\n  notify {{ '{name} part {index}': }}\n}}\n"
        )
        found[f"templates/t{index}.epp"] = f"<%# {name} {index} %>\n" + "line\n" * (index % 7 + 1)
    return found


def make_module(out: Path, name: str, files: int) -> tuple[str, str]:
    """Build one module repository; return its URL and the commit of ``main``."""
    bare = out / "modules" / f"{name}.git"
    _bare(bare, "main")
    stream = _Stream()
    first = stream.commit("refs/heads/main", "v1.0.0\n", module_files(name, files))
    stream.tag("v1.0.0", first)
    second = stream.commit(
        "refs/heads/main",
        "v1.1.0\n",
        {"CHANGELOG.md": "## 1.1.0\n"},
        parent=first,
        replace_all=False,
    )
    stream.tag("v1.1.0", second)
    commits = stream.run(bare)
    return bare.resolve().as_uri(), commits[second]


def puppetfile(modules: list[tuple[str, str, str]], env_index: int) -> str:
    """Return an environment's Puppetfile: every module, by tag, branch or commit."""
    lines = ["forge 'https://forge.puppet.com'", ""]
    for index, (name, url, commit) in enumerate(modules):
        pick = (index + env_index) % 3
        if pick == 0:
            ref = f":tag    => 'v1.{(index + env_index) % 2}.0'"
        elif pick == 1:
            ref = ":branch => 'main'"
        else:
            ref = f":commit => '{commit}'"
        lines.append(f"mod '{name}',\n  :git    => '{url}',\n  {ref}\n")
    return "\n".join(lines)


def control_files(modules: list[tuple[str, str, str]], env_index: int, name: str) -> dict[str, str]:
    """Return every file of one environment's branch."""
    motd = "managed by puppet" if env_index == 0 else f"environment {name}"
    return {
        "environment.conf": "modulepath = site-modules:modules:$basemodulepath\n",
        "hiera.yaml": "---\nversion: 5\nhierarchy:\n  - name: common\n    path: common.yaml\n",
        "data/common.yaml": f"---\nprofile::base::motd: '{motd}'\n",
        "manifests/site.pp": "node default {\n  include role::base\n}\n",
        "site-modules/role/manifests/base.pp": "class role::base {\n  include profile::base\n}\n",
        "site-modules/profile/manifests/base.pp": (
            "class profile::base (String $motd = '') {\n  notify { $motd: }\n}\n"
        ),
        "Puppetfile": puppetfile(modules, env_index),
    }


def make_control(out: Path, modules: list[tuple[str, str, str]], envs: int) -> Path:
    """Build the control repository, one branch per environment."""
    bare = out / "control.git"
    _bare(bare, "production")
    stream = _Stream()
    first = None
    for index, name in enumerate(environment_names(envs)):
        mark = stream.commit(
            f"refs/heads/{name}", f"{name}\n", control_files(modules, index, name), parent=first
        )
        first = first or mark
    stream.run(bare)
    return bare


def peer_configs(out: Path, control: Path) -> None:
    """Write r10k's and g10k's configs for the fixture."""
    for tool in ("r10k", "g10k"):
        (out / f"{tool}.yaml").write_text(
            f"---\ncachedir: '{out / tool / 'cache'}'\nsources:\n  main:\n"
            f"    remote: '{control.resolve().as_uri()}'\n"
            f"    basedir: '{out / tool / 'environments'}'\n"
        )


def make_fixture(
    out: Path, envs: int = 20, modules: int = 15, *, files_per_module: int = 40
) -> Path:
    """Build the whole fixture into ``out`` (created); return ``out``."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    built = []
    for index in range(modules):
        name = f"mod{index:02d}"
        url, commit = make_module(out, name, files_per_module)
        built.append((name, url, commit))
    control = make_control(out, built, envs)
    peer_configs(out, control)
    return out


def change_branch(out: Path, branch: str, serial: int) -> str:
    """Commit one changed hiera file on ``branch``; return the new commit.

    What a developer's push does, without a clone: fast-import on top of the
    branch's tip.
    """
    control = Path(out) / "control.git"
    stream = _Stream()
    stream.parts.append(f"reset refs/heads/{branch}\nfrom refs/heads/{branch}^0\n\n".encode())
    stream.commit(
        f"refs/heads/{branch}",
        f"change {serial}\n",
        {"data/common.yaml": f"---\nprofile::base::motd: 'change {serial}'\n"},
        replace_all=False,
    )
    commits = stream.run(control)
    return commits[stream.mark]


def change_module(out: Path, module: str, serial: int) -> str:
    """Commit one changed manifest on ``main`` of module ``module``; return the new commit.

    Every environment whose Puppetfile follows the module's ``main`` branch
    (a third of them, see :func:`puppetfile`) gets it at its next deploy.
    """
    repo = Path(out) / "modules" / f"{module}.git"
    stream = _Stream()
    stream.parts.append(b"reset refs/heads/main\nfrom refs/heads/main^0\n\n")
    stream.commit(
        "refs/heads/main",
        f"change {serial}\n",
        {
            "manifests/init.pp": f"class {module} (\n  String $ensure = 'present',\n) {{\n}}\n# {serial}\n"
        },
        replace_all=False,
    )
    commits = stream.run(repo)
    return commits[stream.mark]


def branches(out: Path) -> Iterator[str]:
    """Yield the control repository's branch names."""
    listed = subprocess.run(
        [
            "git",
            "--git-dir",
            str(Path(out) / "control.git"),
            "for-each-ref",
            "--format=%(refname:short)",
            "refs/heads",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    yield from listed.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--envs", type=int, default=20)
    parser.add_argument("--modules", type=int, default=15)
    parser.add_argument("--files-per-module", type=int, default=40)
    args = parser.parse_args()
    out = make_fixture(args.out, args.envs, args.modules, files_per_module=args.files_per_module)
    print(
        f"control repo: {out / 'control.git'}  environments: {args.envs}  modules: {args.modules}"
    )


if __name__ == "__main__":
    main()
