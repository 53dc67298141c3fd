"""Import the model SDK with the modules the runner never touches left unexecuted until first used.

``import anthropic`` executes about 3,000 modules (1-2 s of CPU in the sandbox), most of them
pydantic types of the beta API and clients of other platforms (Vertex, Bedrock, Foundry) that
the runner never uses. While :func:`import_sdk` runs, a meta-path finder hands out the SDK's
``types``, ``resources`` and ``lib`` modules as *lazy* modules: created, but executed only when
an attribute they do not have yet is read (the technique of :class:`importlib.util.LazyLoader`,
plus two refinements, because this SDK reaches nearly every module through ``from x import y``):

- a package whose ``__init__`` only re-exports names of its own submodules
  (``from .sub import Name as Name``) resolves each name by importing just that submodule;
- the root package's ``from .lib.<platform> import ...`` lines bind placeholders during the
  import, replaced afterwards by a module ``__getattr__`` that imports the real class on first use.

The import then touches what the runner needs (the client, the messages resource, the
``Message`` model), so any surprise shows up here; on any error the SDK's modules are dropped
and it is imported the normal way. The finder exists only for the duration of the import.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
import types
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

SDK = "anthropic"
#: Subpackages handed out as lazy modules while the SDK is imported.
LAZY_PREFIXES = ("anthropic.types", "anthropic.resources", "anthropic.lib")
#: Clients of other platforms the root package re-exports; bound on first use instead.
DEFERRED = (
    "anthropic.lib.foundry",
    "anthropic.lib.vertex",
    "anthropic.lib.bedrock",
    "anthropic.lib.aws",
    "anthropic.lib.google_cloud",
)
_IMPORT_MACHINERY = "<frozen importlib"
_FILE_LOADERS = (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)

_state = threading.local()


class _Placeholder:
    """Stands for ``attr`` of a deferred module in the root package's namespace during its import."""

    def __init__(self, module: str, attr: str) -> None:
        self.module = module
        self.attr = attr


class _Reexports(NamedTuple):
    """What a pure re-export ``__init__`` binds."""

    names: dict[str, tuple[str, str]]
    """name -> (submodule, its attribute)"""
    submodules: set[str]
    has_all: bool


def _reexports(spec: importlib.machinery.ModuleSpec) -> _Reexports:
    """What the package's ``__init__`` binds, when it only re-exports; else ValueError.

    Only these statements are allowed: a docstring, ``from __future__``, ``__all__ = ...``
    and ``from .sub import A as B`` (one level, no star). Anything else, and the package is
    executed whole on its first attribute read.
    """
    if spec.origin is None or not spec.origin.endswith("__init__.py"):
        raise ValueError(spec.name)
    with open(spec.origin, "rb") as fh:  # noqa: PTH123 - the spec's own path, read once
        tree = ast.parse(fh.read(), spec.origin)
    found = _Reexports({}, set(), has_all=False)
    for node in tree.body:
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) or (
            isinstance(node, ast.ImportFrom) and node.module == "__future__"
        ):
            continue
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "__all__"
        ):
            found = found._replace(has_all=True)
            continue
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 1
            and node.module
            and "." not in node.module
            and all(alias.name != "*" for alias in node.names)
        ):
            found.submodules.add(node.module)
            for alias in node.names:
                found.names[alias.asname or alias.name] = (node.module, alias.name)
            continue
        raise ValueError(spec.name)
    return found


def _reexports_of(spec: importlib.machinery.ModuleSpec, state: dict[str, Any]) -> _Reexports | None:
    """:func:`_reexports` once per package; None when it is not a pure re-export."""
    if "reexports" not in state:
        try:
            state["reexports"] = _reexports(spec)
        except (OSError, SyntaxError, ValueError):
            state["reexports"] = None
    parsed: _Reexports | None = state["reexports"]
    return parsed


def _importer_is_root() -> bool:
    """Whether the attribute read comes from the root package's own ``__init__`` (import frames skipped)."""
    frame: types.FrameType | None = sys._getframe(1)  # noqa: SLF001 - who asks decides whether a placeholder may answer
    while frame is not None and (
        frame.f_code.co_filename.startswith(_IMPORT_MACHINERY)
        or frame.f_globals.get("__name__") == __name__
    ):
        frame = frame.f_back
    return frame is not None and frame.f_globals.get("__name__") == SDK


class _LazyModule(types.ModuleType):
    """A module not executed yet: reading an attribute it lacks executes it (or one submodule)."""

    def __getattr__(self, name: str) -> Any:
        namespace = object.__getattribute__(self, "__dict__")
        spec: importlib.machinery.ModuleSpec = namespace["__spec__"]
        state: dict[str, Any] = spec.loader_state
        with state["lock"]:
            if object.__getattribute__(self, "__class__") is _LazyModule:
                found, value = self._resolve(spec, state, name)
                if found:
                    return value
                self._execute(spec, state)
        return getattr(self, name)

    def _resolve(
        self, spec: importlib.machinery.ModuleSpec, state: dict[str, Any], name: str
    ) -> tuple[bool, Any]:
        """(True, value) when ``name`` is answered without executing the module."""
        if name == "__path__" and spec.submodule_search_locations is None:
            # Asked by every `from module import x`; only a package's import binds it.
            raise AttributeError(name)
        if getattr(_state, "deferring", False) and spec.name in DEFERRED and _importer_is_root():
            return self._defer(spec, state, name)
        if name.startswith("__") or spec.submodule_search_locations is None:
            return False, None
        parsed = _reexports_of(spec, state)
        if parsed is None or (name in parsed.names and name in parsed.submodules):
            # Not a pure re-export, or which binding wins depends on the order of the lines.
            return False, None
        if name in parsed.names:
            submodule, attr = parsed.names[name]
            value = getattr(importlib.import_module(f"{spec.name}.{submodule}"), attr)
            object.__getattribute__(self, "__dict__")[name] = value
            return True, value
        if name in parsed.submodules:
            return True, importlib.import_module(f"{spec.name}.{name}")
        # The whole __init__ would not bind it either: the import system then tries a submodule.
        raise AttributeError(name)

    @staticmethod
    def _defer(
        spec: importlib.machinery.ModuleSpec, state: dict[str, Any], name: str
    ) -> tuple[bool, Any]:
        """Placeholders for the root package's ``from .lib.<platform> import ...`` lines."""
        if name == "__all__":
            parsed = _reexports_of(spec, state)
            if parsed is None or parsed.has_all:
                return False, None
            # What a star import of the executed __init__ (it has no __all__) would bind.
            public = [*parsed.names, *sorted(parsed.submodules)]
            return True, [n for n in public if not n.startswith("_")]
        if name.startswith("__"):
            return False, None
        return True, _Placeholder(spec.name, name)

    def _execute(self, spec: importlib.machinery.ModuleSpec, state: dict[str, Any]) -> None:
        loader: importlib.abc.Loader = state["loader"]
        # A plain module from here on: reads during its own execution see it half-built,
        # exactly as in a normal import.
        object.__setattr__(self, "__class__", types.ModuleType)
        spec.loader = loader
        object.__getattribute__(self, "__dict__")["__loader__"] = loader
        try:
            loader.exec_module(self)
        except BaseException:
            # As a failed import does: the half-built module does not stay importable.
            if sys.modules.get(spec.name) is self:
                del sys.modules[spec.name]
            raise


class _LazyLoader(importlib.abc.Loader):
    """Wraps a module's real loader: creates the module and leaves its execution for later."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        """What the real loader would create."""
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        """Mark the module lazy instead of executing it."""
        spec = module.__spec__
        if spec is None:  # pragma: no cover - the import system always sets it
            self.loader.exec_module(module)
            return
        spec.loader_state = {"lock": threading.RLock(), "loader": self.loader}
        module.__class__ = _LazyModule


class LazySDKFinder(importlib.abc.MetaPathFinder):
    """Finds the SDK's subpackages as the path finder does, with their loaders made lazy."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,  # noqa: ARG002 - the finder protocol
    ) -> importlib.machinery.ModuleSpec | None:
        """A lazy spec for the SDK's subpackages; None (the next finder decides) for the rest."""
        if not any(fullname == p or fullname.startswith(p + ".") for p in LAZY_PREFIXES):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, _FILE_LOADERS):
            return spec
        spec.loader = _LazyLoader(spec.loader)
        return spec


def _root_getattr(root: types.ModuleType, deferred: dict[str, _Placeholder]) -> None:
    """Give the root package a module ``__getattr__`` that binds each deferred name on first use."""
    lock = threading.Lock()
    exported = set(getattr(root, "__all__", ()))
    previous = vars(root).get("__getattr__")

    def __getattr__(name: str) -> Any:  # noqa: N807 - PEP 562's module __getattr__
        with lock:
            placeholder = deferred.get(name)
            if placeholder is None:
                if previous is not None:
                    return previous(name)
                raise AttributeError(f"module {SDK!r} has no attribute {name!r}")
            value = getattr(importlib.import_module(placeholder.module), placeholder.attr)
            if name in exported:
                # as the SDK's __init__ does for what it exports
                with contextlib.suppress(TypeError, AttributeError):
                    value.__module__ = SDK
            root.__dict__[name] = value
            del deferred[name]
            return value

    root.__getattr__ = __getattr__  # type: ignore[method-assign]


def _touch(root: Any) -> None:
    """Execute now what the runner's first model call needs, so a surprise shows up here."""
    _ = (root.Anthropic, root.DefaultHttpxClient, root.APIError, root.APIStatusError)
    _ = (root.APIConnectionError, root.APITimeoutError)
    importlib.import_module(f"{SDK}.resources.messages").Messages  # noqa: B018 - executes it
    message = importlib.import_module(f"{SDK}.types").Message
    message.model_validate(
        {
            "id": "msg_0",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [
                {"type": "text", "text": "t"},
                {"type": "tool_use", "id": "tu_0", "name": "n", "input": {}},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
    )


def _drop_sdk() -> None:
    for name in [n for n in sys.modules if n == SDK or n.startswith(SDK + ".")]:
        del sys.modules[name]


def import_sdk() -> types.ModuleType:
    """Import the SDK lazily as described above; on any error, the normal import."""
    if SDK in sys.modules:
        return sys.modules[SDK]
    try:
        finder = LazySDKFinder()
        sys.meta_path.insert(0, finder)
        try:
            _state.deferring = True
            try:
                root = importlib.import_module(SDK)
            finally:
                _state.deferring = False
            deferred = {k: v for k, v in list(vars(root).items()) if type(v) is _Placeholder}
            for name in deferred:
                delattr(root, name)
            _root_getattr(root, deferred)
            _touch(root)
        finally:
            sys.meta_path.remove(finder)
    except Exception:  # any surprise: the SDK the normal way, never a broken run
        logger.warning("lazy import of %s failed; importing it whole", SDK, exc_info=True)
        _drop_sdk()
        return importlib.import_module(SDK)
    return root
