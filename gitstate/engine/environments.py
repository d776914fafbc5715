"""Deploying environments: control branches + Puppetfiles → storage commits.

:class:`Deployer` is the engine the deploy queue's workers call:

* :meth:`Deployer.collect` fetches every source's mirror and names its
  branches (r10k's rules, :mod:`gitstate.engine.sources`);
* :meth:`Deployer.deploy` builds one environment *in git*: the branch's
  tree, each Puppetfile module's tree at its install path, and a
  ``.r10k-deploy.json`` record, composed in the storage repository and
  published by compare-and-swap on the code ref (:mod:`gitstate.engine.storage`);
* :meth:`Deployer.purge` and :meth:`Deployer.remove` take environments
  whose branches are gone out of the code ref.

A deploy whose inputs are unchanged (same control commit, same resolved
module commits and Forge versions) is skipped without a commit, as g10k
skips an environment whose signature matches. A deploy that fails raises
:class:`DeployFailure` and leaves the last good version published. One
environment is never built twice at once: an ``flock`` per environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2

from gitstate.base.hostlock import environment_lock_path, flocked
from gitstate.config import Config
from gitstate.engine.forge import DEFAULT_FORGE, Forge, ForgeError
from gitstate.engine.links import UnsafeSymlink
from gitstate.engine.mirrors import (
    REMOTE_HEAD,
    FetchFailed,
    LocalSourceRefused,
    LocalSources,
    Mirrors,
    UnsafeURL,
)
from gitstate.engine.puppetfile import (
    CONTROL_BRANCH,
    PUPPETFILE,
    Module,
    Puppetfile,
    PuppetfileError,
    parse,
)
from gitstate.engine.puppetfile_ruby import RubyEvaluator
from gitstate.engine.sources import (
    EnvironmentCollision,
    Sources,
    correct_name,
    environment_name_problem,
)
from gitstate.engine.storage import PublishConflict, Published, Storage, UnsafeEntry
from gitstate.errors import GitStateError

log = logging.getLogger(__name__)

DEPLOY_RECORD = ".r10k-deploy.json"
#: The ref r10k 3.x (the r10k under Code Manager) wants for a git module
#: that names none (``@desired_ref ||= 'master'`` in ``R10K::Module::Git``).
R10K3_DEFAULT_REF = "master"
ENGINE_VERSION = "1"
_HEX40 = re.compile(r"\A[0-9a-fA-F]{40}\Z")
_HEX_PREFIX = re.compile(r"\A[0-9a-fA-F]{7,40}\Z")


class CollectFailed(GitStateError):
    """The list of environments could not be made (Code Manager's collect-failed).

    Attributes:
        details: r10k-style text naming every source that failed and why.
    """

    def __init__(self, details: str) -> None:
        self.details = details
        super().__init__(details)


class DeployFailure(GitStateError):
    """One environment could not be deployed (Code Manager's deploy-failure).

    The previously published version of the environment, if any, stays.

    Attributes:
        environment: the name as requested.
        corrected_name: the name after r10k's correction.
        message: what went wrong.
    """

    def __init__(self, environment: str, corrected_name: str, message: str) -> None:
        self.environment = environment
        self.corrected_name = corrected_name
        self.message = message
        super().__init__(message)


class UnresolvableRef(GitStateError, LookupError):
    """A git module's ref names nothing in its remote (r10k's wording)."""

    def __init__(
        self, module: str, desired: str | None, default: str | None, control: bool
    ) -> None:
        self.module = module
        self.desired = desired
        self.default = default
        parts = [f"Unable to manage Puppetfile content '{module}':"]
        if control:
            parts.append("Could not resolve control repo branch")
        elif desired:
            parts.append(f"Could not resolve desired ref '{desired}'")
        else:
            parts.append("Could not determine desired ref")
        parts.append(
            f"or resolve default ref '{default}'" if default else "and no default provided"
        )
        super().__init__(" ".join(parts))


@dataclasses.dataclass(frozen=True)
class EnvironmentSource:
    """Where an environment comes from, as of one collection.

    Attributes:
        environment: the environment (directory) name.
        source: the source's name.
        branch: the branch in the control repository.
        name: the branch after ``strip_component`` (the record's ``name``).
        sha: the branch's commit when collected.
        remote: the control repository's URL.
    """

    environment: str
    source: str
    branch: str
    name: str
    sha: str
    remote: str


@dataclasses.dataclass
class Collection:
    """The environments every source offers, as fetched at one moment.

    Module remotes fetched while deploying with this collection are fetched
    once, however many environments use them.
    """

    environments: dict[str, EnvironmentSource]
    collected_at: float
    published: dict[str, str] = dataclasses.field(default_factory=dict)
    """Environment → environment-commit published when collecting began."""
    fresh_after: float | None = None
    """Mirrors fetched since this time are not fetched again (None: always fetch once)."""
    refused: dict[str, str] = dataclasses.field(default_factory=dict)
    """Environment → why, for branches whose environment name cannot be a directory."""
    _fetched: dict[str, FetchFailed | None] = dataclasses.field(default_factory=dict, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def names(self) -> list[str]:
        """Return the environment names, sorted."""
        return sorted(self.environments)


@dataclasses.dataclass(frozen=True)
class ModuleDeploy:
    """One module as deployed (an entry of the record's ``module_deploys``)."""

    name: str
    version: str | None
    sha: str | None

    def to_json(self) -> dict[str, Any]:
        """Return the record's JSON form."""
        return {"name": self.name, "version": self.version, "sha": self.sha}


@dataclasses.dataclass(frozen=True)
class DeployResult:
    """What one deploy did.

    Attributes:
        environment: the (corrected) environment name.
        signature: the control-branch commit deployed.
        environment_commit: the environment's commit in storage.
        code_commit: the code-commit that publishes it.
        module_deploys: every module and what it resolved to.
        skipped: True when nothing changed and no commit was made.
    """

    environment: str
    signature: str
    environment_commit: str
    code_commit: str
    module_deploys: tuple[ModuleDeploy, ...]
    skipped: bool = False


@dataclasses.dataclass(frozen=True)
class _Previous:
    tree: pygit2.Tree
    modules: dict[str, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class _Resolved:
    module: Module
    deploy: ModuleDeploy
    tree: pygit2.Oid | None  # tree in the module's mirror (git) or storage (forge)
    repo: pygit2.Repository | None  # the mirror to import from (git)
    key: str


class Deployer:
    """Builds and publishes environments for one data directory.

    Args:
        datadir: gitstate's data directory (``cache/``, ``storage.git``,
            ``locks/`` live under it).
        sources: the control repositories.
        forge_url: the Forge v3 API base URL for Forge modules.
        fetch_timeout: seconds one git fetch may take.
        default_ref: ref for git modules that give none (r10k 4's
            ``git.default_ref``); None: ``master`` as r10k 3, else the
            remote's default branch.
        fetch_workers: how many remotes are fetched at once.
        private_key: ssh private key for ssh remotes (else the ssh agent).
        fsync: make each published version durable before its ref moves
            (``state.fsync``).
        local_module_sources: directories Puppetfile git modules may be
            fetched from on this host (``deploy.local_module_sources``);
            none by default, and never the data directory. Control
            repositories (``sources``) are configured by the operator and
            are not limited.
        puppetfile_ruby: evaluates Puppetfiles the parser cannot read
            (``deploy.puppetfile_ruby``); None refuses them.
    """

    def __init__(
        self,
        datadir: Path,
        sources: Sources,
        *,
        forge_url: str = DEFAULT_FORGE,
        fetch_timeout: float = 30.0,
        default_ref: str | None = None,
        fetch_workers: int = 8,
        private_key: str | None = None,
        fsync: bool = False,
        local_module_sources: Sequence[Path] = (),
        puppetfile_ruby: RubyEvaluator | None = None,
        storage_remote: str | None = None,
        remote_timeout: float = 10.0,
    ) -> None:
        self.datadir = Path(datadir)
        self.sources = sources
        self.local_sources = LocalSources(tuple(local_module_sources), (self.datadir,))
        self.default_ref = default_ref
        self.puppetfile_ruby = puppetfile_ruby
        self.mirrors = Mirrors(
            self.datadir / "cache",
            timeout=fetch_timeout,
            workers=fetch_workers,
            private_key=private_key,
        )
        self.storage = Storage(
            self.datadir / "storage.git",
            fsync=fsync,
            remote=storage_remote,
            remote_timeout=remote_timeout,
        )
        self.forge = Forge(forge_url, self.storage, timeout=fetch_timeout)
        self.lockdir = self.datadir / "locks"
        self._puppetfiles: dict[bytes, Puppetfile | PuppetfileError] = {}

    @classmethod
    def from_config(cls, config: Config) -> Deployer:
        """Build from the service configuration (``sources``, ``deploy``, ``state.fsync``)."""
        deploy = config.deploy
        return cls(
            config.datadir,
            Sources.from_settings(config.sources),
            forge_url=deploy.forge_url,
            fetch_timeout=deploy.timeouts.fetch,
            default_ref=deploy.default_ref,
            fetch_workers=deploy.fetch_workers,
            private_key=deploy.private_key,
            fsync=config.state.fsync,
            local_module_sources=deploy.local_module_sources,
            storage_remote=config.storage.remote,
            remote_timeout=config.state.remote_timeout,
            puppetfile_ruby=(
                RubyEvaluator(deploy.ruby, deploy.timeouts.puppetfile)
                if deploy.puppetfile_ruby
                else None
            ),
        )

    # -- collecting ---------------------------------------------------------------------

    def collect(self, *, fresh_after: float | None = None) -> Collection:
        """Fetch every source and list the environments its branches make.

        Args:
            fresh_after: a time (``time.time()``), usually when the deploy
                was requested. Mirrors whose last fetch started at or after
                it are not fetched again, by this collection nor by deploys
                using it: they already hold what the remote had when the
                request came. None fetches every remote once.

        Raises:
            CollectFailed: a source could not be fetched, or two branches
                make the same environment.
        """
        started = time.time()
        published = self.environments()
        results = self.mirrors.fetch_all(
            (source.remote for source in self.sources), fresh_after=fresh_after
        )
        errors = []
        for source in self.sources:
            error = results.get(source.remote)
            if error is not None:
                errors.append(
                    f"ERROR\t -> Unable to determine current branches for Git source "
                    f"'{source.name}'\nOriginal exception:\n{error}"
                )
        if errors:
            raise CollectFailed("\n".join(errors))
        heads = {source.name: self.mirrors.branches(source.remote) for source in self.sources}
        refused: dict[str, str] = {}
        try:
            named = self.sources.environments(heads, refused)
        except EnvironmentCollision as ex:
            raise CollectFailed(f"ERROR\t -> {ex}") from ex
        environments = {
            env: EnvironmentSource(
                environment=env,
                source=branch.source,
                branch=branch.branch,
                name=branch.name,
                sha=heads[branch.source][branch.branch],
                remote=self.sources.get(branch.source).remote,
            )
            for env, branch in named.items()
        }
        return Collection(environments, started, published, fresh_after, refused)

    # -- deploying ----------------------------------------------------------------------

    def deploy(
        self,
        environment: str,
        *,
        collection: Collection | None = None,
        deploy_modules: bool = True,
        purge: bool = True,
        fresh_after: float | None = None,
    ) -> DeployResult:
        """Build ``environment`` and publish it, unless nothing changed.

        Args:
            environment: the name as requested (``feature/x`` is corrected
                to ``feature_x``, as r10k does).
            collection: a collection made for this deploy run; a fresh one
                is made when None.
            deploy_modules: when False and the environment exists, its
                modules are kept as they are (Code Manager's
                ``deploy-modules``); a new environment gets them anyway.
            purge: also remove environments whose branches are gone
                (r10k's deployment purge, run on every deploy).
            fresh_after: when no collection is given, passed to
                :meth:`collect`: the time the deploy was requested, so that
                a deploy-all queued as one deploy per environment fetches
                each remote once rather than once per environment.

        Raises:
            DeployFailure: the environment is unknown or cannot be built.
        """
        corrected = correct_name(environment)
        if collection is None:
            try:
                collection = self.collect(fresh_after=fresh_after)
            except CollectFailed as ex:
                raise DeployFailure(environment, corrected, ex.details) from ex
        source = collection.environments.get(corrected)
        if source is None and corrected in collection.refused:
            raise DeployFailure(
                environment,
                corrected,
                f"Environment '{corrected}' cannot be deployed: {collection.refused[corrected]}.",
            )
        if source is None:
            raise DeployFailure(
                environment,
                corrected,
                f"Environment(s) '{corrected}' cannot be found in any source "
                "and will not be deployed.",
            )
        if (
            environment_name_problem(corrected) is not None
            or ".." in corrected
            or corrected.endswith((".lock", "."))
        ):
            raise DeployFailure(
                environment, corrected, f"'{corrected}' cannot be used as an environment name"
            )
        try:
            with self._env_lock(corrected):
                result = self._deploy(source, collection, deploy_modules)
        except (
            PuppetfileError,
            UnresolvableRef,
            FetchFailed,
            UnsafeURL,
            LocalSourceRefused,
            ForgeError,
            UnsafeSymlink,
            UnsafeEntry,
            PublishConflict,
            ValueError,
            KeyError,
            OSError,
            pygit2.GitError,
        ) as ex:
            if isinstance(ex, PuppetfileError) and ex.environment is None:
                ex.for_environment(corrected)
            # The deploy worker reports the failure to a person (gitstate.process.console).
            log.error("deploy of %s failed: %s", corrected, ex, extra={"notable": False})
            raise DeployFailure(
                environment, corrected, f"Errors while deploying environment '{corrected}': {ex}"
            ) from ex
        if purge:
            with contextlib.suppress(GitStateError, OSError):
                self.purge(collection)
        return result

    def _deploy(
        self, source: EnvironmentSource, collection: Collection, deploy_modules: bool
    ) -> DeployResult:
        env = source.environment
        started = datetime.now(UTC)
        control = self.mirrors.open(source.remote)
        # The mirror may have been fetched since this collection was made (by
        # another worker's newer collection): deploy the newest commit known,
        # so a worker holding an old list never puts an older version back.
        current = control.references.get(f"refs/heads/{source.branch}")
        if current is not None and str(current.target) != source.sha:
            source = dataclasses.replace(source, sha=str(current.target))
        commit = control[pygit2.Oid(hex=source.sha)].peel(pygit2.Commit)
        puppetfile = self._puppetfile(control, commit.tree, env)
        published = self.storage.published_one(env)
        previous = self._previous_modules(published) if published else None

        resolved = [
            self._resolve(module, source, collection, previous, keep=not deploy_modules)
            for module in puppetfile.modules
        ]
        key_data = [ENGINE_VERSION, source.sha, source.name, [item.key for item in resolved]]
        deploy_key = hashlib.sha256(json.dumps(key_data).encode()).hexdigest()
        module_deploys = tuple(item.deploy for item in resolved)
        if published is not None and published.deploy_key == deploy_key:
            # Published by an engine that judged links by their text alone?
            self.storage.check_links(pygit2.Oid(hex=published.tree))
            code = self.storage.code_commit()
            assert code is not None
            return DeployResult(
                env, source.sha, published.commit, code, module_deploys, skipped=True
            )

        base = self.storage.import_tree(control, commit.tree_id)
        placements: dict[str, pygit2.Oid] = {}
        for item in resolved:
            if item.tree is None:
                continue
            module = item.module
            if item.repo is not None:
                imported = self.storage.import_tree(
                    item.repo, item.tree, exclude_spec=module.exclude_spec
                )
            else:
                imported = self.storage.import_tree(
                    self.storage.repo, item.tree, exclude_spec=module.exclude_spec
                )
            placements[module.path] = imported.oid
        finished = datetime.now(UTC)
        record = {
            "name": source.name,
            "signature": source.sha,
            "started_at": _ruby_time(started),
            "finished_at": _ruby_time(finished),
            "deploy_success": True,
            "module_deploys": [item.to_json() for item in module_deploys],
        }
        blob = self.storage.write_blob(
            (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode()
        )
        try:
            tree = self.storage.compose(base.oid, placements, {DEPLOY_RECORD: blob})
        except ValueError as ex:
            raise PuppetfileError(str(ex), environment=env) from ex
        # Only the whole tree says where a link lands: a module's link may
        # pass through the branch's, and the other way round.
        self.storage.check_links(tree)
        message = (
            f"Deploy {env} at {source.sha[:12]}\n\n"
            f"Source: {source.source}\nBranch: {source.branch}\nSignature: {source.sha}\n"
        )
        env_commit = self.storage.commit_environment(env, tree, message)
        code = self.storage.publish(
            {env: Published(env, env_commit, str(tree), source.sha, deploy_key)},
            f"Publish {env} at {source.sha[:12]}",
        )
        assert code is not None
        log.info("Environment %s is now at %s", env, source.sha)
        return DeployResult(env, source.sha, env_commit, code, module_deploys)

    def _puppetfile(self, repo: pygit2.Repository, tree: pygit2.Tree, env: str) -> Puppetfile:
        if PUPPETFILE not in tree:
            return Puppetfile()
        entry = tree[PUPPETFILE]
        if entry.type_str != "blob":
            return Puppetfile()
        found = self._puppetfiles.get(entry.id.raw)
        if found is None:
            try:
                evaluate = self.puppetfile_ruby.evaluate if self.puppetfile_ruby else None
                text = repo[entry.id].data.decode("utf-8", "replace")
                found = parse(text, evaluate=evaluate)
            except PuppetfileError as ex:
                found = ex
            if len(self._puppetfiles) > 10_000:
                self._puppetfiles.clear()
            self._puppetfiles[entry.id.raw] = found
        if isinstance(found, PuppetfileError):
            raise _copy_error(found, env)
        return found

    def _previous_modules(self, published: Published) -> _Previous:
        """Return the published tree and its record's modules by name."""
        tree = self.storage.repo[published.tree]
        try:
            record = json.loads(self.storage.repo[tree[DEPLOY_RECORD].id].data)
            entries = {item["name"]: item for item in record.get("module_deploys", [])}
        except (KeyError, ValueError, TypeError):
            entries = {}
        return _Previous(tree, entries)

    def _resolve(
        self,
        module: Module,
        source: EnvironmentSource,
        collection: Collection,
        previous: _Previous | None,
        *,
        keep: bool = False,
    ) -> _Resolved:
        if module.kind == "git" and module.url is not None:
            self.local_sources.check(module.name, module.url)
        if keep and previous is not None and module.kind != "local":
            kept = self._keep_previous(module, previous)
            if kept is not None:
                return kept
        if module.kind == "local":
            return _Resolved(
                module,
                ModuleDeploy(module.name, "0.0.0 (local)", None),
                None,
                None,
                f"local:{module.path}",
            )
        if module.kind == "forge":
            wanted = module.version
            if wanted is None and previous is not None:
                # No version: the latest when first installed, then kept (r10k).
                entry = previous.modules.get(module.name, {})
                kept = entry.get("version")
                if entry.get("sha") is None and isinstance(kept, str) and " " not in kept:
                    wanted = kept
            since = collection.fresh_after or collection.collected_at
            version, tree = self.forge.install(module.forge_name, wanted, since=since)
            key = f"forge:{module.path}:{module.forge_name}:{version}:{tree}:{module.exclude_spec}"
            return _Resolved(module, ModuleDeploy(module.name, version, None), tree, None, key)
        assert module.url is not None
        desired = source.branch if module.ref == CONTROL_BRANCH else module.ref
        default = module.default_branch or self.default_ref
        remote_head = False
        if desired is None and self.default_ref is None:
            # r10k 3.x (Code Manager's) wants 'master' when no ref is given,
            # then :default_branch; where it would fail (a remote without
            # 'master'), the remote's default branch (its HEAD) is deployed.
            desired, default, remote_head = R10K3_DEFAULT_REF, module.default_branch, True
        repo, commit, used = self._resolve_git(
            module, desired, default, collection, remote_head=remote_head
        )
        if commit is None:
            raise UnresolvableRef(module.name, desired, default, module.ref == CONTROL_BRANCH)
        key = f"git:{module.path}:{module.url}:{commit.id}:{module.exclude_spec}"
        return _Resolved(
            module, ModuleDeploy(module.name, used, str(commit.id)), commit.tree_id, repo, key
        )

    def _keep_previous(self, module: Module, previous: _Previous) -> _Resolved | None:
        try:
            entry = previous.tree[module.path]
        except KeyError:
            return None
        if entry.type_str != "tree":
            return None
        item = previous.modules.get(module.name, {})
        deploy = ModuleDeploy(module.name, item.get("version"), item.get("sha"))
        key = f"kept:{module.path}:{entry.id}"
        return _Resolved(
            dataclasses.replace(module, exclude_spec=False), deploy, entry.id, None, key
        )

    def _resolve_git(
        self,
        module: Module,
        desired: str | None,
        default: str | None,
        collection: Collection,
        *,
        remote_head: bool = False,
    ) -> tuple[pygit2.Repository | None, pygit2.Commit | None, str | None]:
        url = module.url
        assert url is not None
        known = self._static(module, desired)
        if known is not None:
            return known
        self._fetch_once(url, collection)
        repo = self.mirrors.open(url)
        for candidate, kind in ((desired, module.ref_kind), (default, None)):
            if candidate:
                commit = _lookup(repo, candidate, kind)
                if commit is not None:
                    return repo, commit, candidate
        if remote_head:
            commit = _lookup(repo, REMOTE_HEAD, None)
            if commit is not None:
                return repo, commit, "HEAD"
        return repo, None, None

    def _static(
        self, module: Module, desired: str | None
    ) -> tuple[pygit2.Repository, pygit2.Commit, str | None] | None:
        """Resolve a tag or commit the mirror already holds, without fetching.

        A tag or a commit id names the same commit forever (r10k does not
        fetch them again either); branches always need a fetch.
        """
        assert module.url is not None
        static = module.ref_kind in ("tag", "commit") or (
            desired is not None and _HEX40.match(desired)
        )
        if not static or not self.mirrors.exists(module.url):
            return None
        repo = self.mirrors.open(module.url)
        commit = _lookup(repo, desired, module.ref_kind)
        return (repo, commit, desired) if commit is not None else None

    def _fetch_once(self, url: str, collection: Collection) -> None:
        with collection._lock:
            done = url in collection._fetched
            error = collection._fetched.get(url)
        if not done:
            try:
                self.mirrors.fetch(url, fresh_after=collection.fresh_after)
                error = None
            except FetchFailed as ex:
                error = ex
            with collection._lock:
                collection._fetched[url] = error
        if error is not None:
            raise error

    def prefetch(self, collection: Collection, environments: list[str] | None = None) -> None:
        """Fetch, in parallel, the git module remotes the environments need fetched.

        Remotes of modules pinned to a tag or commit the mirror already
        holds are not fetched. Optional: :meth:`deploy` fetches what it needs
        on its own, one remote at a time; calling this first for several
        environments overlaps the waits.
        """
        urls: set[str] = set()
        for env in environments or collection.names():
            source = collection.environments.get(env)
            if source is None:
                continue
            try:
                control = self.mirrors.open(source.remote)
                commit = control[pygit2.Oid(hex=source.sha)].peel(pygit2.Commit)
                puppetfile = self._puppetfile(control, commit.tree, env)
            except (PuppetfileError, FetchFailed, KeyError):
                continue
            for module in puppetfile.modules:
                if module.kind != "git" or not module.url:
                    continue
                try:
                    self.local_sources.check(module.name, module.url)
                except LocalSourceRefused:
                    continue  # the deploy says why
                desired = source.branch if module.ref == CONTROL_BRANCH else module.ref
                if self._static(module, desired) is None:
                    urls.add(module.url)
        with collection._lock:
            todo = [url for url in sorted(urls) if url not in collection._fetched]
        results = self.mirrors.fetch_all(todo, fresh_after=collection.fresh_after)
        with collection._lock:
            collection._fetched.update(results)

    # -- removing -----------------------------------------------------------------------

    def remove(self, environment: str, *, if_commit: str | None = None) -> str | None:
        """Take an environment out of the code ref now (its branch was deleted).

        Args:
            environment: the name (corrected as r10k does).
            if_commit: remove only while this environment-commit is the
                published one (how :meth:`purge` avoids removing a version
                deployed since its collection).

        Returns:
            the new code-commit, or None if nothing was removed.
        """
        env = correct_name(environment)
        if env not in self.storage.published():
            return None
        with self._env_lock(env):
            current = self.storage.published().get(env)
            if current is None or (if_commit is not None and current.commit != if_commit):
                return None
            code = self.storage.publish({env: None}, f"Remove {env}")
            self.storage.delete_environment_ref(env)
        log.info("Environment %s removed", env, extra={"notable": True})
        return code

    def purge(self, collection: Collection) -> list[str]:
        """Remove published environments that ``collection`` no longer lists.

        An environment (re)published after the collection was made is kept:
        its deployer saw a newer list of branches, in which it exists.
        """
        removed = []
        for env, item in self.storage.published().items():
            if env in collection.environments or collection.published.get(env) != item.commit:
                continue
            if self.remove(env, if_commit=item.commit) is not None:
                removed.append(env)
        return removed

    def environments(self) -> dict[str, str]:
        """Return every published environment → its environment-commit."""
        return {env: item.commit for env, item in self.storage.published().items()}

    def _env_lock(self, env: str) -> contextlib.AbstractContextManager[None]:
        return flocked(environment_lock_path(self.lockdir, env))


def _copy_error(error: PuppetfileError, env: str) -> PuppetfileError:
    """Return a copy of a cached parse error, naming this environment."""
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.args = error.args
    return copy.for_environment(env)


def _lookup(repo: pygit2.Repository, ref: str | None, kind: str | None) -> pygit2.Commit | None:
    """Resolve a Puppetfile ref in a mirror: tags, branches, then commit ids."""
    if not ref:
        return None
    if kind == "commit" or _HEX40.match(ref):
        candidates = [("oid", ref)]
    elif kind == "tag":
        candidates = [("ref", f"refs/tags/{ref}"), ("ref", f"refs/heads/{ref}")]
    elif kind == "branch":
        candidates = [("ref", f"refs/heads/{ref}"), ("ref", f"refs/tags/{ref}")]
    else:
        candidates = [("ref", f"refs/tags/{ref}"), ("ref", f"refs/heads/{ref}")]
        if ref.startswith("refs/"):
            candidates.insert(0, ("ref", ref))
        if _HEX_PREFIX.match(ref):
            candidates.append(("oid", ref))
    for how, name in candidates:
        try:
            if how == "ref":
                obj = repo.lookup_reference(name).peel(pygit2.Commit)
            else:
                obj = repo.revparse_single(name).peel(pygit2.Commit)
            return obj
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            continue
    return None


def _ruby_time(moment: datetime) -> str:
    """Format a time as Ruby's ``Time#to_s`` does, as r10k's record has it."""
    return moment.strftime("%Y-%m-%d %H:%M:%S +0000")
