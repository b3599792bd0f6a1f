"""Python: a layer whose class the user writes, named by python_param { module layer param_str }.

The class follows this project's Layer contract, not pycaffe's: subclass geeps_net.layer.Layer (or
duck-type it) with setup(bottoms, tops), reshape(bottoms, tops), forward(xp, bottoms, tops) and
backward(xp, tops, propagate_down, bottoms). It is built as Class(layer_param, phase) and sees
python_param.param_str as `self.param_str`. Its learnable blobs, internals and class attributes
(num_bottoms, backward_reads, ...) are the Python layer's.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

import numpy

from geeps_net.layer import TRAIN, Layer, register

# The contract's methods and the arguments each takes besides self.
_METHODS = {
    "setup": ("bottoms", "tops"),
    "reshape": ("bottoms", "tops"),
    "forward": ("xp", "bottoms", "tops"),
    "backward": ("xp", "tops", "propagate_down", "bottoms"),
}

# What a duck-typed class that does not say gets: any blob counts, and a backward that may read
# everything (so the PS keeps all of it).
_DEFAULTS = {
    "num_bottoms": (0, None),
    "num_tops": (0, None),
    "backward_reads": frozenset({"bottom_data", "top_data", "top_diff"}),
    "has_backward": True,
    "is_loss": False,
    "no_gradient_bottoms": (),
    "reshape_reads_data": False,
}


def _delegated(name: str, default):
    """A property reading and writing `name` on the user's layer instance."""

    def get(self):
        return getattr(self.impl, name, default)

    def set_(self, value):
        setattr(self.impl, name, value)

    return property(get, set_, doc=f"The user layer's `{name}`.")


def _accepts(fn, *args) -> bool:
    """Whether fn(*args) binds to fn's signature (True when it has none to inspect)."""
    try:
        inspect.signature(fn).bind(*args)
    except TypeError:
        return False
    except ValueError:  # builtins without a signature: trust them
        pass
    return True


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


@register("Python")
class PythonLayer(Layer):
    """Delegates every call of the Layer contract to an instance of python_param's module.layer."""

    def __init__(self, layer_param, phase: int = TRAIN) -> None:
        # No Layer.__init__: blobs, internals, dtype, rng and shard live on the user's instance.
        self.layer_param, self.phase, self.name = layer_param, phase, layer_param.name
        self.impl = self._build(layer_param, phase)
        defaults = {"blobs": [], "fillers": [], "internals": {}, "shard": (0, 1)}
        defaults |= {"dtype": numpy.dtype("float32"), "rng": numpy.random.default_rng(0)}
        for name, value in defaults.items():
            if not hasattr(self.impl, name):
                setattr(self.impl, name, value)

    def _build(self, layer_param, phase):
        """Import the module, check the class against the contract, instantiate it."""
        p = layer_param.python_param
        if not p.module or not p.layer:
            raise self.error("python_param needs both `module` and `layer` (the class name)")
        cls = getattr(self._import(p.module), p.layer, None)
        if cls is None:
            raise self.error(f"module {p.module!r} has no class {p.layer!r}")
        self._check_contract(cls, f"{p.module}.{p.layer}")
        impl = cls(layer_param, phase)
        impl.param_str = p.param_str
        if isinstance(impl, Layer) and not impl.type:
            impl.type = "Python"  # so the user's self.error(...) reads like every other layer's
        return impl

    def _import(self, module: str):
        """Import `module` from sys.path as it is, plus the current directory (searched last)."""
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.append(cwd)
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                raise self.error(f"no module named {module!r} (sys.path and {cwd})") from None
            raise self.error(f"importing module {module!r} failed: {_one_line(e)}") from e
        except Exception as e:  # a user module that raises on import: one line, chained cause
            raise self.error(f"importing module {module!r} failed: {_one_line(e)}") from e
        finally:
            if added and cwd in sys.path:
                sys.path.remove(cwd)

    def _check_contract(self, cls, qualname: str) -> None:
        """Raise unless `cls` is a class with the contract's methods and constructor."""
        if not inspect.isclass(cls):
            raise self.error(f"{qualname} is not a class")
        optional = {"setup"} | (set() if getattr(cls, "has_backward", True) else {"backward"})
        for method, args in _METHODS.items():
            fn = getattr(cls, method, None)
            if fn is None and method in optional:
                continue
            want = f"{method}({', '.join(args)})"
            if not callable(fn):
                raise self.error(f"class {qualname} has no {want} (this project's Layer contract)")
            if not _accepts(fn, None, *args):
                raise self.error(
                    f"class {qualname}: {method}{inspect.signature(fn)} does not take {want} "
                    "(this project's Layer contract, not pycaffe's)"
                )
        if not _accepts(cls, "layer_param", "phase"):
            raise self.error(f"class {qualname} cannot be built as {qualname}(layer_param, phase)")

    # -- delegated state ------------------------------------------------------------------------

    blobs = _delegated("blobs", None)
    fillers = _delegated("fillers", None)
    internals = _delegated("internals", None)
    dtype = _delegated("dtype", None)
    rng = _delegated("rng", None)
    shard = _delegated("shard", None)
    param_str = _delegated("param_str", "")
    num_bottoms = _delegated("num_bottoms", _DEFAULTS["num_bottoms"])
    num_tops = _delegated("num_tops", _DEFAULTS["num_tops"])
    backward_reads = _delegated("backward_reads", _DEFAULTS["backward_reads"])
    has_backward = _delegated("has_backward", _DEFAULTS["has_backward"])
    is_loss = _delegated("is_loss", _DEFAULTS["is_loss"])
    no_gradient_bottoms = _delegated("no_gradient_bottoms", _DEFAULTS["no_gradient_bottoms"])
    reshape_reads_data = _delegated("reshape_reads_data", _DEFAULTS["reshape_reads_data"])

    # -- the contract, delegated ----------------------------------------------------------------

    def setup(self, bottoms, tops):
        if getattr(self.impl, "setup", None) is not None:
            self.impl.setup(bottoms, tops)

    def reshape(self, bottoms, tops):
        self.impl.reshape(bottoms, tops)

    def forward(self, xp, bottoms, tops):
        self.impl.forward(xp, bottoms, tops)

    def backward(self, xp, tops, propagate_down, bottoms):
        self.impl.backward(xp, tops, propagate_down, bottoms)

    def close(self):
        if getattr(self.impl, "close", None) is not None:
            self.impl.close()

    def allow_force_backward(self, bottom_index: int) -> bool:
        if getattr(self.impl, "allow_force_backward", None) is not None:
            return self.impl.allow_force_backward(bottom_index)
        return bottom_index not in self.no_gradient_bottoms
