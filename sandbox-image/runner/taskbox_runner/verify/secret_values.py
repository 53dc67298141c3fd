"""Constraint 2's second half: secrets rebuilt from literals, and whether a value looks like one.

detect-secrets and ruff read a secret where it is written as one literal. Code
can assemble it instead: parts concatenated (``"AKIA" + "..."``) or joined
(``"".join([...])``, ``"".join(chr(c) for c in [...])``), an f-string of literals, a base64-, base32- or hex-encoded
literal decoded at run time, a reversed literal. :class:`Rebuilder` computes such
values (following module-level names bound to literals) so they can be scanned
as if written out; so is the literal fallback of ``os.getenv(NAME, "...")``,
a secret that ships with the code all the same. :func:`looks_like_credential` tells a credential from the
other strings that credential-named constants hold: a header name
(``"X-Items-Token"``), a scheme (``"bearer"``), a field name (``"access_token"``),
an environment variable name, a URL or path, a template or a placeholder.
"""

from __future__ import annotations

import ast
import base64
import binascii
import codecs
import itertools
import re
from dataclasses import dataclass

from taskbox_runner.verify.endpoints import dotted_name

#: Name parts that make a variable, argument or key credential-like.
CREDENTIAL_PARTS = frozenset(
    {
        "password", "passwd", "pwd", "pass", "passphrase", "secret", "token", "apikey", "key",
        "credential", "credentials", "auth", "privatekey", "accesskey", "signingkey",
    }
)  # fmt: skip
#: Values that credential-named constants hold without being credentials.
NOT_SECRETS = frozenset(
    {
        "bearer", "basic", "digest", "token", "jwt", "oauth", "oauth2", "password", "secret",
        "apikey", "api_key", "hs256", "hs384", "hs512", "rs256", "rs384", "rs512", "es256",
        "es384", "eddsa", "sha1", "sha256", "sha512", "md5", "bcrypt", "argon2", "pbkdf2",
        "pbkdf2_sha256", "scrypt", "utf-8", "utf8", "ascii", "authorization", "cookie", "header",
        "query", "none", "null", "true", "false", "access", "refresh", "session", "hex", "base64",
    }
)  # fmt: skip
_HEADER = re.compile(r"^[A-Z][A-Za-z0-9]*(?:-[A-Z][A-Za-z0-9]*)+$")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[_.\-][A-Za-z0-9]+)*$")
_FILE = re.compile(r"^[\w.\-/]+\.(?:txt|pem|key|json|env|crt|cer|cfg|ini|yaml|yml|toml|p12)$")
_TEMPLATE = re.compile(r"\{[^}]*\}|%\(?\w*\)?s|\$\{|<[^>]+>")
_NAME_PARTS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
MIN_SECRET_LENGTH = 4


def name_parts(name: str) -> list[str]:
    """``API_KEY`` / ``apiKey`` / ``api-key`` -> ``["api", "key"]`` (and the joined pairs)."""
    parts = [p.lower() for p in _NAME_PARTS.findall(name)]
    return parts + [a + b for a, b in itertools.pairwise(parts)]


def is_credential_name(name: str) -> bool:
    """Whether a variable, argument or key is named like a credential."""
    return bool(set(name_parts(name)) & CREDENTIAL_PARTS)


def looks_like_credential(value: str) -> bool:
    """Whether a string could be a credential rather than a name, scheme, header, URL or template."""
    text = value.strip()
    if len(text) < MIN_SECRET_LENGTH or any(c.isspace() for c in text):
        return False
    if text.lower() in NOT_SECRETS or len(set(text)) == 1:
        return False
    if _HEADER.match(text) or _ENV_NAME.match(text) or _FILE.match(text):
        return False
    if _TEMPLATE.search(text):
        return False
    if text.startswith("/") or ("://" in text and "@" not in text):
        return False
    # A field or parameter name: an identifier of words naming a credential (``access_token``,
    # ``x-api-key``); digits mixed in make it a value (``my-secret-x9``).
    return not (
        _IDENTIFIER.match(text)
        and is_credential_name(text)
        and text.isascii()
        and not any(c.isdigit() for c in text)
    )


@dataclass(frozen=True)
class Rebuilt:
    """A string computed from literals, and how."""

    value: str
    how: str
    """'' for a plain literal; else e.g. 'concatenated literals', 'a base64-decoded literal'."""


_DECODERS = {
    "b64decode": ("base64", base64.b64decode),
    "urlsafe_b64decode": ("base64", base64.urlsafe_b64decode),
    "standard_b64decode": ("base64", base64.standard_b64decode),
    "b32decode": ("base32", base64.b32decode),
    "b16decode": ("hex", base64.b16decode),
    "a85decode": ("ascii85", base64.a85decode),
    "b85decode": ("base85", base64.b85decode),
    "unhexlify": ("hex", binascii.unhexlify),
    "a2b_hex": ("hex", binascii.a2b_hex),
    "a2b_base64": ("base64", binascii.a2b_base64),
    "fromhex": ("hex", bytes.fromhex),
}


def _text(raw: bytes | str) -> str | None:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Rebuilder:
    """Values of expressions built only from literals, in one module."""

    def __init__(self, tree: ast.Module) -> None:
        self.names: dict[str, ast.expr] = {}
        counts: dict[str, int] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        self.names[target.id] = node.value
                        counts[target.id] = counts.get(target.id, 0) + 1
        # A name bound more than once at module level has no single value.
        for name, count in counts.items():
            if count > 1:
                del self.names[name]

    def fallback(self, expr: ast.expr) -> Rebuilt | None:
        """The literal default of ``os.getenv(NAME, default)``/``os.environ.get(NAME, default)``."""
        if (
            isinstance(expr, ast.Call)
            and dotted_name(expr.func).endswith(("getenv", "environ.get", "environ.setdefault"))
            and len(expr.args) >= 2  # noqa: PLR2004 - (name, default)
        ):
            value = self.rebuild(expr.args[1])
            if value is not None:
                how = value.how or "a literal"
                return Rebuilt(value.value, f"{how} as the fallback of {dotted_name(expr.func)}()")
        return None

    def rebuild(self, expr: ast.expr, depth: int = 0) -> Rebuilt | None:  # noqa: C901, PLR0911 - one branch per way to build a string
        """The string ``expr`` evaluates to, if only literals go into it."""
        if depth > 12:  # noqa: PLR2004 - deeper is a cycle or generated code
            return None
        deeper = depth + 1
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str | bytes):
            text = _text(expr.value)
            return Rebuilt(text, "") if text is not None else None
        if isinstance(expr, ast.Name) and expr.id in self.names:
            return self.rebuild(self.names[expr.id], deeper)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            left, right = self.rebuild(expr.left, deeper), self.rebuild(expr.right, deeper)
            if left is None or right is None:
                return None
            return Rebuilt(left.value + right.value, "concatenated literals")
        if isinstance(expr, ast.JoinedStr):
            pieces = []
            for part in expr.values:
                value = part.value if isinstance(part, ast.FormattedValue) else part
                rebuilt = self.rebuild(value, deeper)
                if rebuilt is None:
                    return None
                pieces.append(rebuilt.value)
            return Rebuilt("".join(pieces), "an f-string of literals")
        if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Slice):
            inner = self.rebuild(expr.value, deeper)
            step = expr.slice.step
            if (
                inner is not None
                and isinstance(step, ast.UnaryOp)
                and expr.slice.lower is None
                and expr.slice.upper is None
                and ast.unparse(step) == "-1"
            ):
                return Rebuilt(inner.value[::-1], "a reversed literal")
            return None
        if isinstance(expr, ast.List | ast.Tuple):
            return None
        if isinstance(expr, ast.Call):
            return self._call(expr, deeper)
        return None

    def _parts(self, expr: ast.expr, depth: int) -> list[str] | None:  # noqa: PLR0911 - one return per iterable shape
        if isinstance(expr, ast.Name) and expr.id in self.names:
            return self._parts(self.names[expr.id], depth + 1)
        if isinstance(expr, ast.Call) and dotted_name(expr.func) == "reversed" and expr.args:
            inner = self._parts(expr.args[0], depth + 1)
            return inner[::-1] if inner is not None else None
        if (
            isinstance(expr, ast.GeneratorExp | ast.ListComp)
            and len(expr.generators) == 1
            and isinstance(expr.generators[0].target, ast.Name)
            and isinstance(expr.elt, ast.Call)
            and dotted_name(expr.elt.func) == "chr"
        ):
            # "".join(chr(c) for c in [104, 105]): character codes spelled out.
            codes = expr.generators[0].iter
            if isinstance(codes, ast.Name) and codes.id in self.names:
                codes = self.names[codes.id]
            if isinstance(codes, ast.List | ast.Tuple) and all(
                isinstance(e, ast.Constant) and isinstance(e.value, int) for e in codes.elts
            ):
                try:
                    return [
                        chr(e.value)
                        for e in codes.elts
                        if isinstance(e, ast.Constant) and isinstance(e.value, int)
                    ]
                except (ValueError, OverflowError):
                    return None
            return None
        if isinstance(expr, ast.List | ast.Tuple):
            values = [self.rebuild(e, depth) for e in expr.elts]
            if any(v is None for v in values):
                return None
            return [v.value for v in values if v is not None]
        rebuilt = self.rebuild(expr, depth)
        return list(rebuilt.value) if rebuilt is not None else None

    def _call(self, call: ast.Call, depth: int) -> Rebuilt | None:  # noqa: PLR0911 - one return per decoder shape
        func = call.func
        if not isinstance(func, ast.Attribute | ast.Name):
            return None
        short = func.attr if isinstance(func, ast.Attribute) else func.id
        if short == "join" and isinstance(func, ast.Attribute) and len(call.args) == 1:
            separator = self.rebuild(func.value, depth)
            parts = self._parts(call.args[0], depth)
            if separator is None or parts is None:
                return None
            return Rebuilt(separator.value.join(parts), "joined literals")
        if dotted_name(func) == "codecs.decode":
            return self._codecs(call, depth)
        if short in {"decode", "strip"} and isinstance(func, ast.Attribute):
            inner = self.rebuild(func.value, depth)
            if inner is None:
                return None
            return Rebuilt(inner.value if short == "decode" else inner.value.strip(), inner.how)
        if short in _DECODERS and call.args:
            source = self.rebuild(call.args[0], depth)
            if source is None:
                return None
            kind, decoder = _DECODERS[short]
            try:
                text = _text(decoder(source.value))  # type: ignore[operator]
            except (ValueError, binascii.Error, TypeError):
                return None
            return Rebuilt(text, f"a {kind}-decoded literal") if text is not None else None
        return None

    def _codecs(self, call: ast.Call, depth: int) -> Rebuilt | None:
        if len(call.args) < 2:  # noqa: PLR2004 - codecs.decode(data, encoding)
            return None
        source, encoding = self.rebuild(call.args[0], depth), self.rebuild(call.args[1], depth)
        if source is None or encoding is None:
            return None
        data: bytes | str = source.value
        if encoding.value.startswith(("hex", "base64")):
            data = source.value.encode()
        try:
            raw = codecs.decode(data, encoding.value)  # type: ignore[arg-type]
        except (LookupError, ValueError, TypeError):
            return None
        text = _text(raw)
        return Rebuilt(text, f"a {encoding.value}-decoded literal") if text is not None else None


@dataclass(frozen=True)
class Candidate:
    """A value given to a name in the code: ``NAME = value``, ``f(name=value)``, ``{"name": value}``."""

    name: str
    value: ast.expr
    line: int


def candidates(tree: ast.Module) -> list[Candidate]:
    """Every named value in the module: assignments, keyword arguments, dict entries, defaults."""
    found: list[Candidate] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = target.id if isinstance(target, ast.Name) else ""
                name = target.attr if isinstance(target, ast.Attribute) else name
                found.append(Candidate(name, node.value, node.lineno))
        elif isinstance(node, ast.Call):
            found += [Candidate(k.arg, k.value, k.value.lineno) for k in node.keywords if k.arg]
        elif isinstance(node, ast.Dict):
            found += [
                Candidate(k.value, v, v.lineno)
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            ]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            positional = node.args.posonlyargs + node.args.args
            pairs = list(
                zip(
                    positional[len(positional) - len(node.args.defaults) :],
                    node.args.defaults,
                    strict=True,
                )
            )
            pairs += [
                (a, d)
                for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True)
                if d is not None
            ]
            found += [Candidate(a.arg, d, d.lineno) for a, d in pairs]
    return found
