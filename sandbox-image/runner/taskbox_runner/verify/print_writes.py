"""Constraint 8's second half: console output that ruff's T201/T203 do not see.

ruff reports calls to ``print``/``pprint`` by name. This pass reports the other
ways production code writes to the console: ``sys.stdout``/``sys.stderr`` (and
``sys.__stdout__``/``__stderr__``) ``.write``/``.writelines``/``.buffer.write``,
``os.write(1 or 2, ...)``, and aliases of ``print``/``pprint`` (``out = print``,
``from pprint import pprint as show``, ``builtins.print``,
``functools.partial(print, ...)``, ``getattr(builtins, "print")``,
``write = sys.stdout.write``) when called or
handed on as a value (``map(print, rows)``, ``callback=print``).
"""

from __future__ import annotations

import ast

from taskbox_runner.verify.endpoints import dotted_name
from taskbox_runner.verify.models import Finding

RULE_STREAM = "TB0802"
RULE_ALIAS = "TB0803"
PRINTERS = frozenset(
    {"print", "builtins.print", "__builtins__.print", "pprint.pprint", "pprint.pp", "rich.print"}
)
STREAMS = frozenset({"sys.stdout", "sys.stderr", "sys.__stdout__", "sys.__stderr__"})
WRITE_METHODS = frozenset({"write", "writelines"})


def _imports(tree: ast.Module) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


class ConsoleUse:
    """What in one module is a printer or a console stream, by name."""

    def __init__(self, tree: ast.Module) -> None:
        self.imported = _imports(tree)
        self.printers: set[str] = set()
        self.streams: set[str] = set()
        for local, origin in self.imported.items():
            if origin in PRINTERS:
                self.printers.add(local)
            elif origin in STREAMS:
                self.streams.add(local)
        # Aliases by assignment anywhere in the module (``out = print``, ``err = sys.stderr``).
        for _ in range(2):
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    kind = self.kind(node.value)
                    for target in targets:
                        if isinstance(target, ast.Name) and kind == "printer":
                            self.printers.add(target.id)
                        elif isinstance(target, ast.Name) and kind == "stream":
                            self.streams.add(target.id)

    def canonical(self, expr: ast.expr) -> str:
        """The dotted name with its first part replaced by what it was imported as."""
        name = dotted_name(expr)
        first, _, rest = name.partition(".")
        origin = self.imported.get(first)
        if origin is None:
            return name
        return f"{origin}.{rest}" if rest else origin

    def kind(self, expr: ast.expr) -> str:  # noqa: PLR0911 - one return per way to name a printer
        """'printer', 'stream' or ''."""
        name = dotted_name(expr)
        canonical = self.canonical(expr)
        if name in self.printers or canonical in PRINTERS:
            return "printer"
        if name in self.streams or canonical in STREAMS:
            return "stream"
        if isinstance(expr, ast.Call):
            called = self.canonical(expr.func)
            if called in {"functools.partial", "partial"} and expr.args:
                return self.kind(expr.args[0])
            if (
                called == "getattr"
                and len(expr.args) >= 2  # noqa: PLR2004 - getattr(obj, name)
                and isinstance(expr.args[1], ast.Constant)
                and isinstance(expr.args[1].value, str)
            ):
                attribute = f"{self.canonical(expr.args[0])}.{expr.args[1].value}"
                if attribute in PRINTERS:
                    return "printer"
                if attribute in STREAMS:
                    return "stream"
        if isinstance(expr, ast.Attribute) and expr.attr == "buffer":
            return self.kind(expr.value)
        if isinstance(expr, ast.Attribute) and expr.attr in WRITE_METHODS:
            # ``write = sys.stdout.write``: the bound method prints like print does.
            return "printer" if self.kind(expr.value) == "stream" else ""
        return ""


def _call_finding(rel: str, node: ast.Call, use: ConsoleUse) -> Finding | None:
    """A call that writes to the console other than a plain ``print(...)``/``pprint(...)``."""
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in WRITE_METHODS:
        if use.kind(func.value) != "stream":
            return None
        return Finding(
            rel,
            node.lineno,
            RULE_STREAM,
            f"writes to {ast.unparse(func.value)} with .{func.attr}(); "
            "use logging.getLogger(__name__)",
        )
    if use.canonical(func) == "os.write" and node.args:
        fd = node.args[0]
        if isinstance(fd, ast.Constant) and fd.value in {1, 2}:
            return Finding(
                rel,
                node.lineno,
                RULE_STREAM,
                f"os.write() to file descriptor {fd.value}; use logging.getLogger(__name__)",
            )
        return None
    if use.kind(func) == "printer" and ast.unparse(func) not in {"print", "pprint"}:
        return Finding(
            rel,
            node.lineno,
            RULE_ALIAS,
            f"calls {ast.unparse(func)}(), an alias of print/pprint or a console write; "
            "use logging.getLogger(__name__)",
        )
    return None


def find_console_writes(rel: str, tree: ast.Module) -> list[Finding]:
    """Console writes and print aliases in one module (plain ``print(...)`` is left to ruff)."""
    use = ConsoleUse(tree)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    findings = [f for f in (_call_finding(rel, node, use) for node in calls) if f is not None]
    # ``map(print, rows)``, ``callback=print``: the printer leaves as a value and is called later.
    callees = {id(node.func) for node in calls}
    findings += [
        Finding(
            rel,
            node.lineno,
            RULE_ALIAS,
            f"hands {ast.unparse(value)} to {ast.unparse(node.func)}() to be called; "
            "use logging.getLogger(__name__)",
        )
        for node in calls
        for value in [*node.args, *(k.value for k in node.keywords)]
        if id(value) not in callees and use.kind(value) == "printer"
    ]
    return findings
