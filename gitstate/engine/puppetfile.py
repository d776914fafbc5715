"""Puppetfiles, read without Ruby.

A Puppetfile is Ruby, but the part of Ruby people write in one is small:
``mod``, ``forge`` and ``moduledir`` calls whose arguments are strings,
symbols, booleans and hashes in either spelling (``:key => 'v'`` or
``key: 'v'``), with or without parentheses, spread over lines joined by
trailing commas, with ``#`` comments. This module tokenizes exactly that and
refuses everything else with an error that names the line, so that a typo
fails one environment loudly instead of deploying half of it.

The checks r10k makes are made here too, with r10k's wording where people
grep logs for it: unknown declarations, duplicate module names, install
paths outside the environment. URLs are checked by
:func:`gitstate.engine.mirrors.check_url` before anything is fetched.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Callable, Sequence
from typing import Any

from gitstate.engine.mirrors import UnsafeURL, check_url
from gitstate.errors import GitStateError

PUPPETFILE = "Puppetfile"
DEFAULT_MODULEDIR = "modules"
REF_KEYS = ("ref", "branch", "tag", "commit", "version")
CONTROL_BRANCH = ":control_branch"
LATEST = ":latest"
_NAME = re.compile(r"\A(?:(\w+)[-/])?(\w+)\Z", re.ASCII)
#: A Forge version r10k accepts: SemVer as semantic_puppet's
#: ``Version.valid?`` reads it (no ranges, no two-part versions).
_SEMVER = re.compile(
    r"\A(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?\Z",
    re.ASCII,
)
#: The byte-order mark some editors put first in a UTF-8 file; Ruby skips it.
BOM = "\ufeff"
_KNOWN_KEYS = frozenset(
    {
        "git",
        "source",
        "type",
        "ref",
        "branch",
        "tag",
        "commit",
        "version",
        "default_branch",
        "local",
        "install_path",
        "exclude_spec",
    }
)


class PuppetfileError(GitStateError, ValueError):
    """A Puppetfile cannot be used; the environment it belongs to fails.

    Attributes:
        detail: what is wrong, in r10k's words where r10k has some.
        line: 1-based line of the Puppetfile, when known.
        module: the module concerned, when one is.
        environment: the environment being deployed, when known.
    """

    def __init__(
        self,
        detail: str,
        *,
        line: int | None = None,
        module: str | None = None,
        environment: str | None = None,
    ) -> None:
        self.detail = detail
        self.line = line
        self.module = module
        self.environment = environment
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.environment:
            where.append(f"environment {self.environment}")
        if self.line is not None:
            where.append(f"Puppetfile line {self.line}")
        return f"{', '.join(where)}: {self.detail}" if where else self.detail

    def for_environment(self, environment: str) -> PuppetfileError:
        """Return this error with the environment filled in."""
        self.environment = environment
        self.args = (self._text(),)
        return self


class PuppetfileSyntaxError(PuppetfileError):
    """The text is not the Ruby subset a Puppetfile is written in."""


class UnrecognizedDeclaration(PuppetfileError):
    """A call other than ``mod``, ``forge``, ``moduledir`` or ``exclusion``."""

    def __init__(self, declaration: str, *, line: int | None = None) -> None:
        self.declaration = declaration
        super().__init__(f"unrecognized declaration '{declaration}'", line=line)


class DuplicateModules(PuppetfileError):
    """Two ``mod`` lines install a module of the same name."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        super().__init__(
            "Puppetfiles cannot contain duplicate module names. "
            f"Remove the duplicates of the following modules: {' '.join(names)}",
            module=names[0],
        )


class InstallPathOutside(PuppetfileError):
    """A module would be installed outside its environment."""

    def __init__(self, module: str, path: str, *, line: int | None = None) -> None:
        self.path = path
        super().__init__(
            f"Puppetfile cannot manage content '{module}' outside of containing environment: "
            f"{path} is not within the environment",
            line=line,
            module=module,
        )


class InvalidModule(PuppetfileError):
    """A ``mod`` line has a bad name, URL or option."""


@dataclasses.dataclass(frozen=True)
class Module:
    """One ``mod`` declaration.

    Attributes:
        title: the name as written (``puppetlabs-apache``).
        name: the module name (``apache``), also its directory name.
        kind: ``git``, ``forge`` or ``local``.
        path: where it is installed, relative to the environment root.
        line: the line of the declaration.
        url: the git remote (git modules).
        ref: the desired ref; :data:`CONTROL_BRANCH` tracks the control branch.
        ref_kind: which key gave it (``ref``, ``branch``, ``tag``, ``commit``).
        default_branch: fallback when ``ref`` cannot be resolved.
        version: the Forge version, :data:`LATEST`, or None (latest once).
        exclude_spec: drop the module's top-level ``spec`` directory.
    """

    title: str
    name: str
    kind: str
    path: str
    line: int
    url: str | None = None
    ref: str | None = None
    ref_kind: str | None = None
    default_branch: str | None = None
    version: str | None = None
    exclude_spec: bool = True

    @property
    def forge_name(self) -> str:
        """The Forge's ``author-name`` spelling of the title."""
        return self.title.replace("/", "-")


@dataclasses.dataclass(frozen=True)
class Puppetfile:
    """A parsed Puppetfile: where modules go and which ones."""

    moduledir: str = DEFAULT_MODULEDIR
    forge: str | None = None
    modules: tuple[Module, ...] = ()


# -- tokenizer ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # ident, string, symbol, key, arrow, comma, lparen, rparen, lbrace, rbrace, nl
    value: str
    line: int


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+|\\\n)
  | (?P<comment>\#[^\n]*)
  | (?P<nl>\n|;)
  | (?P<sq>'(?:[^'\\]|\\.)*')
  | (?P<dq>"(?:[^"\\]|\\.)*")
  | (?P<arrow>=>)
  | (?P<symstr>:(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"))
  | (?P<symbol>:[A-Za-z_]\w*[?!]?)
  | (?P<key>[A-Za-z_]\w*:(?!:))
  | (?P<ident>[A-Za-z_]\w*[?!]?)
  | (?P<number>\d[\d.]*)
  | (?P<punct>[,(){}])
    """,
    re.VERBOSE | re.ASCII,
)
_PUNCT = {",": "comma", "(": "lparen", ")": "rparen", "{": "lbrace", "}": "rbrace"}


def _unquote(text: str) -> str:
    quote, body = text[0], text[1:-1]
    if quote == "'":
        return re.sub(r"\\([\\'])", r"\1", body)
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "#": "#"}
    if "#{" in body:
        raise ValueError("string interpolation is not supported")
    return re.sub(r"\\(.)", lambda match: escapes.get(match.group(1), match.group(1)), body)


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    line = 1
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            snippet = text[pos : pos + 20].split("\n", 1)[0]
            raise PuppetfileSyntaxError(f"unexpected text {snippet!r}", line=line)
        kind = match.lastgroup or ""
        value = match.group()
        try:
            if kind in ("sq", "dq"):
                tokens.append(_Token("string", _unquote(value), line))
            elif kind == "symstr":
                tokens.append(_Token("symbol", ":" + _unquote(value[1:]), line))
            elif kind == "symbol":
                tokens.append(_Token("symbol", value, line))
            elif kind == "key":
                tokens.append(_Token("key", value[:-1], line))
            elif kind in ("ident", "arrow", "number"):
                tokens.append(_Token(kind, value, line))
            elif kind == "punct":
                tokens.append(_Token(_PUNCT[value], value, line))
            elif kind == "nl":
                tokens.append(_Token("nl", value, line))
        except ValueError as ex:
            raise PuppetfileSyntaxError(str(ex), line=line) from ex
        line += value.count("\n")
        pos = match.end()
    tokens.append(_Token("nl", "", line))
    return tokens


class _Parser:
    """Turns tokens into ``(declaration, positional args, keyword args, line)``."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def skip_newlines(self) -> None:
        while self.peek().kind == "nl" and self.pos < len(self.tokens) - 1:
            self.pos += 1

    def statements(self) -> list[tuple[str, list[Any], dict[str, Any], int]]:
        out = []
        while True:
            self.skip_newlines()
            token = self.peek()
            if token.kind == "nl":
                return out
            if token.kind != "ident":
                raise PuppetfileSyntaxError(
                    f"expected a declaration, found {token.value!r}", line=token.line
                )
            self.take()
            out.append((token.value, *self.arguments(token.line), token.line))

    def arguments(self, line: int) -> tuple[list[Any], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        paren = self.peek().kind == "lparen"
        if paren:
            self.take()
        if self.peek().kind in ("nl", "rparen"):
            if paren:
                self.skip_newlines()
                self.expect("rparen")
            self.end_of_statement()
            return args, kwargs
        while True:
            if paren:
                self.skip_newlines()
            self.argument(args, kwargs)
            if paren:
                self.skip_newlines()
            token = self.peek()
            if token.kind == "comma":
                self.take()
                self.skip_newlines()  # a trailing comma continues the statement
                continue
            if paren:
                self.expect("rparen")
            self.end_of_statement()
            return args, kwargs

    def argument(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        token = self.peek()
        if token.kind == "lbrace":
            self.take()
            while True:
                self.skip_newlines()
                if self.peek().kind == "rbrace":
                    self.take()
                    return
                self.pair(kwargs)
                self.skip_newlines()
                if self.peek().kind == "comma":
                    self.take()
                    continue
                self.expect("rbrace")
                return
        if token.kind == "key" or (
            token.kind in ("symbol", "string") and self.tokens[self.pos + 1].kind == "arrow"
        ):
            self.pair(kwargs)
            return
        if kwargs:
            raise PuppetfileSyntaxError(
                f"positional argument {token.value!r} after options", line=token.line
            )
        args.append(self.value())

    def pair(self, kwargs: dict[str, Any]) -> None:
        token = self.take()
        if token.kind == "key":
            key = token.value
        elif token.kind in ("symbol", "string"):
            key = token.value.lstrip(":") if token.kind == "symbol" else token.value
            self.expect("arrow")
        else:
            raise PuppetfileSyntaxError(
                f"expected an option, found {token.value!r}", line=token.line
            )
        self.skip_newlines()
        if key in kwargs:
            raise PuppetfileSyntaxError(f"option :{key} given twice", line=token.line)
        kwargs[key] = self.value()

    def value(self) -> Any:
        token = self.take()
        if token.kind in ("string", "symbol", "number"):
            return token.value
        if token.kind == "ident" and token.value in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[token.value]
        found = "end of line" if token.kind == "nl" else repr(token.value)
        raise PuppetfileSyntaxError(f"expected a value, found {found}", line=token.line)

    def expect(self, kind: str) -> _Token:
        token = self.take()
        if token.kind != kind:
            found = "end of line" if token.kind == "nl" else repr(token.value)
            raise PuppetfileSyntaxError(f"expected {kind}, found {found}", line=token.line)
        return token

    def end_of_statement(self) -> None:
        token = self.peek()
        if token.kind != "nl":
            raise PuppetfileSyntaxError(
                f"unexpected {token.value!r} after the arguments", line=token.line
            )


# -- declarations ---------------------------------------------------------------------


def parse(
    text: str,
    *,
    environment: str | None = None,
    evaluate: Callable[[str], Puppetfile] | None = None,
) -> Puppetfile:
    """Parse a Puppetfile.

    Args:
        text: the file's contents.
        environment: named in errors, if given.
        evaluate: what reads a Puppetfile the parser cannot (one that uses
            Ruby beyond the DSL), such as
            :meth:`gitstate.engine.puppetfile_ruby.RubyEvaluator.evaluate`;
            None refuses such files, saying how to turn evaluation on.

    Raises:
        PuppetfileError: the file cannot be used; a subclass says why.
    """
    try:
        try:
            return _parse(text.removeprefix(BOM))
        except (PuppetfileSyntaxError, UnrecognizedDeclaration) as ex:
            # NOTE: an unknown declaration may be Ruby (require, puts, a
            # method defined above); Ruby says the same words if it is not.
            if evaluate is not None:
                return evaluate(text)
            if isinstance(ex, PuppetfileSyntaxError):
                ex.detail += RUBY_HINT
                ex.args = (ex._text(),)
            raise
    except PuppetfileError as ex:
        if environment:
            ex.for_environment(environment)
        raise


#: Said by a refusal the Ruby evaluator could lift.
RUBY_HINT = (
    "; the Puppetfile parser reads the Puppetfile DSL without Ruby. To evaluate"
    " Puppetfiles that use Ruby (def, variables, string building) as r10k does,"
    " set deploy.puppetfile_ruby: true"
)


def _parse(text: str) -> Puppetfile:
    return build(_Parser(_tokens(text)).statements())


def build(statements: Sequence[tuple[str, list[Any], dict[str, Any], int]]) -> Puppetfile:
    """Check declarations and return the Puppetfile they make.

    The parser and the Ruby evaluator (:mod:`gitstate.engine.puppetfile_ruby`)
    both end here, so what one refuses the other refuses too.

    Args:
        statements: ``(declaration, positional args, options, line)`` in
            file order; strings, ``:symbols``, booleans and None as values.

    Raises:
        PuppetfileError: the declarations cannot be used.
    """
    moduledir = DEFAULT_MODULEDIR
    forge: str | None = None
    modules: list[Module] = []
    for name, args, kwargs, line in statements:
        if name == "mod":
            modules.append(_module(args, kwargs, line, moduledir))
        elif name == "moduledir":
            moduledir = _single_string(name, args, kwargs, line)
            _inside("moduledir", moduledir, line)
        elif name == "forge":
            forge = _single_string(name, args, kwargs, line)
        elif name == "exclusion":
            continue  # r10k accepts and ignores it
        else:
            raise UnrecognizedDeclaration(name, line=line)
    counts: dict[str, int] = {}
    for module in modules:
        counts[module.name] = counts.get(module.name, 0) + 1
    duplicates = [name for name, count in counts.items() if count > 1]
    if duplicates:
        raise DuplicateModules(duplicates)
    return Puppetfile(moduledir=moduledir, forge=forge, modules=tuple(modules))


def _single_string(name: str, args: list[Any], kwargs: dict[str, Any], line: int) -> str:
    if len(args) != 1 or kwargs or not isinstance(args[0], str) or args[0].startswith(":"):
        raise PuppetfileSyntaxError(f"{name} takes one string", line=line)
    return args[0]


def _inside(module: str, path: str, line: int) -> str:
    """Normalise a path relative to the environment root, refusing escapes."""
    if not path or "\\" in path or any(ord(ch) < 0x20 for ch in path):
        raise InstallPathOutside(module, path, line=line)
    if posixpath.isabs(path):
        raise InstallPathOutside(module, path, line=line)
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise InstallPathOutside(module, path, line=line)
    return normal


def valid_forge_version(version: str | None) -> bool:
    """Tell whether r10k takes ``version`` for a Forge module (SemVer or latest)."""
    return version is None or version == LATEST or bool(_SEMVER.match(version))


def _module(args: list[Any], kwargs: dict[str, Any], line: int, moduledir: str) -> Module:
    # r10k's DSL is ``def mod(name, args = nil)``: a hash of options counts
    # as one argument, and Ruby refuses any other count in its own words.
    given = len(args) + (1 if kwargs else 0)
    if not 1 <= given <= 2:
        title = args[0] if args and isinstance(args[0], str) else None
        raise InvalidModule(
            f"wrong number of arguments (given {given}, expected 1..2)", line=line, module=title
        )
    if not args or not isinstance(args[0], str) or args[0].startswith(":"):
        raise PuppetfileSyntaxError("mod needs a module name", line=line)
    title = args[0]
    match = _NAME.match(title)
    if match is None:
        raise InvalidModule(
            f"Module name ({title}) must match either 'modulename' or 'owner/modulename'",
            line=line,
            module=title,
        )
    name = match.group(2)
    unknown = sorted(set(kwargs) - _KNOWN_KEYS)
    if unknown:
        raise InvalidModule(
            f"mod '{title}': unsupported option(s) {', '.join(':' + key for key in unknown)}",
            line=line,
            module=title,
        )
    exclude_spec = kwargs.get("exclude_spec", True)
    if not isinstance(exclude_spec, bool):
        raise InvalidModule(
            f"mod '{title}': :exclude_spec must be true or false", line=line, module=title
        )
    install_dir = kwargs.get("install_path", moduledir)
    if not isinstance(install_dir, str) or install_dir.startswith(":"):
        raise InvalidModule(
            f"mod '{title}': :install_path must be a string", line=line, module=title
        )
    base = _inside(title, install_dir, line) if install_dir != moduledir else moduledir
    path = posixpath.normpath(posixpath.join(base, name))
    common = {
        "title": title,
        "name": name,
        "path": path,
        "line": line,
        "exclude_spec": exclude_spec,
    }

    kind = kwargs.get("type")
    url = kwargs.get("git", kwargs.get("source") if kind == "git" else None)
    if kwargs.get("local") is True or kind == "local":
        return Module(kind="local", version="0.0.0", **common)
    if url is not None or kind == "git":
        if not isinstance(url, str) or not url:
            raise InvalidModule(f"mod '{title}': :git needs a URL", line=line, module=title)
        try:
            check_url(url)
        except UnsafeURL as ex:
            raise InvalidModule(f"mod '{title}': {ex}", line=line, module=title) from ex
        given = [key for key in REF_KEYS if key in kwargs]
        if len(given) > 1:
            raise InvalidModule(
                f"mod '{title}': only one of {', '.join(':' + key for key in given)} may be given",
                line=line,
                module=title,
            )
        ref_kind = given[0] if given else None
        ref = kwargs[ref_kind] if ref_kind else None
        if ref is not None and (
            not isinstance(ref, str) or (ref.startswith(":") and ref != CONTROL_BRANCH)
        ):
            raise InvalidModule(f"mod '{title}': bad :{ref_kind} {ref!r}", line=line, module=title)
        default = kwargs.get("default_branch")
        if default is not None and not isinstance(default, str):
            raise InvalidModule(f"mod '{title}': bad :default_branch", line=line, module=title)
        return Module(
            kind="git", url=url, ref=ref, ref_kind=ref_kind, default_branch=default, **common
        )
    if kind not in (None, "forge"):
        raise InvalidModule(
            f"mod '{title}': module type {kind!r} is not supported", line=line, module=title
        )
    version = args[1] if len(args) > 1 else kwargs.get("version")
    if version is not None and (
        not isinstance(version, str) or (version.startswith(":") and version != LATEST)
    ):
        raise InvalidModule(f"mod '{title}': bad version {version!r}", line=line, module=title)
    if not valid_forge_version(version):
        raise InvalidModule(
            f"Module version {version} is not a valid Forge module version",
            line=line,
            module=title,
        )
    if match.group(1) is None:
        raise InvalidModule(
            f"mod '{title}': a Forge module needs an 'author-name' title", line=line, module=title
        )
    return Module(kind="forge", version=version, **common)
