"""Count device-to-host transfers on CPU, with a fake device.

A CPU run has no device, so nothing in it ever waits for one. :class:`HostSyncCounter`
pretends that some tensors live on an accelerator (the model's parameters and buffers,
say) and follows that "device taint" through every aten op run inside it (a
``TorchDispatchMode``: forward, backward and optimiser ops alike): an op's outputs are on
the device when any tensor input is. A tensor made by a factory call that names its
``device=`` explicitly (``torch.tensor(..., device=x.device)``) or moved with
``Tensor.to(device)`` is on the device too, as it would be on a GPU (a host-to-device copy,
which is not counted).

On a tainted tensor it counts what would make the host wait for the device on CUDA:

- ``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``,
  ``if t``, a tensor compared in Python;
- ops whose output shape depends on the data, which copy a count back
  (:data:`DATA_DEPENDENT_OPS`: ``nonzero``, ``masked_select``, indexing with a boolean
  mask, ``unique``, ...) and ops returning a Python value (``equal``);
- explicit host copies: ``.tolist()``, ``.cpu()``, ``.numpy()`` (and ``np.asarray(t)``,
  which calls it);

- ``.to("cpu")`` spelt with the string ``"cpu"``: a move to the model's device is spelt with
  that device (``x.to(self.device)``, ``device=p.device``), which on this CPU run is also
  the CPU, so only the literal string says "the host" (and ``device="cpu"`` in a factory
  call makes a host tensor, as the optimiser's step counters are).

A ``torch.device("cpu")`` built by hand and used to copy to the host is not told apart from
the model's device; on a GPU, ``torch.cuda.set_sync_debug_mode`` catches it
(``tests/gpu/test_train_sync.py``). Each event keeps the stack it came from, so a failing
assertion says where.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten
_HERE = __file__

# Ops that read a device value to the host: their result is a Python number or bool, or
# its shape depends on the data (CUDA copies the count back before it can allocate).
SCALAR_OPS = {aten._local_scalar_dense.default, aten.equal.default}
DATA_DEPENDENT_OPS = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}
# Indexing with a boolean (or uint8) mask is ``nonzero`` then a gather.
MASK_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
# torch functions that build a tensor where ``device=`` says.
FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "eye")
HOST_COPIES = ("tolist", "cpu", "numpy")


@dataclass(frozen=True)
class Transfer:
    """One device-to-host transfer: what it was and the frames (``file:line function``)
    it came from, innermost last."""

    kind: str
    stack: tuple[str, ...]

    def where(self) -> str:
        """The innermost frame outside torch and this module."""
        own = [f for f in self.stack if "/torch/" not in f and not f.startswith(f"{_HERE}:")]
        return own[-1] if own else self.stack[-1]

    def __str__(self) -> str:
        return f"{self.kind} at {self.where()}"


def _stack() -> tuple[str, ...]:
    frames = traceback.extract_stack()[:-3]
    return tuple(f"{f.filename}:{f.lineno} {f.name}" for f in frames)


def _target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Where a ``Tensor.to`` call (or a factory's ``device=``) sends a tensor: ``"host"``
    for the literal string ``"cpu"`` (code that means the host spells it), ``"device"`` for
    any other device or a tensor to follow (``x.to(self.device)``, ``device=p.device``),
    None when it names none (a dtype change)."""
    where = kwargs.get("device")
    if where is None and args and isinstance(args[0], str | torch.device | torch.Tensor):
        where = args[0]
    if where is None:
        return None
    if isinstance(where, str) and where.split(":")[0] == "cpu":
        return "host"
    return "device"


class HostSyncCounter(TorchDispatchMode):
    """Inside ``with counter:``, records a :class:`Transfer` for every device-to-host
    transfer of a tensor on the fake device (module docstring). ``device``: tensors and
    modules whose parameters and buffers are on it from the start.

    Use :meth:`on_device` to put more tensors there, :attr:`transfers` to read the events,
    :meth:`reset` to clear them. One counter may be entered many times; tensors stay on the
    device between entries.
    """

    def __init__(self, device: Iterable[torch.Tensor | nn.Module] = ()) -> None:
        super().__init__()
        self._on: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.transfers: list[Transfer] = []
        self._busy = False
        for item in device:
            if isinstance(item, nn.Module):
                self.on_device(*item.parameters(), *item.buffers())
            else:
                self.on_device(item)

    # -- the taint ----------------------------------------------------------------------------

    def on_device(self, *tensors: torch.Tensor) -> None:
        """Treat ``tensors`` as device tensors."""
        for t in tensors:
            self._on[t] = True

    def is_on_device(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t in self._on

    def reset(self) -> None:
        self.transfers.clear()

    @property
    def count(self) -> int:
        return len(self.transfers)

    def kinds(self) -> list[str]:
        return [t.kind for t in self.transfers]

    def _record(self, kind: str) -> None:
        self.transfers.append(Transfer(kind, _stack()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        inputs, _ = tree_flatten((args, kwargs))
        tainted = any(self.is_on_device(x) for x in inputs)
        if tainted and not self._busy:
            if func in SCALAR_OPS:
                self._record(f"aten.{func.__name__}")
            elif func in DATA_DEPENDENT_OPS:
                self._record(f"aten.{func.__name__} (data-dependent shape)")
            elif func in MASK_INDEX_OPS and _bool_index(args):
                self._record(f"aten.{func.__name__} with a boolean mask")
        out = func(*args, **kwargs)
        if tainted:
            outputs, _ = tree_flatten(out)
            self.on_device(*(o for o in outputs if isinstance(o, torch.Tensor)))
        return out

    # -- Python-level entry points --------------------------------------------------------------

    @contextmanager
    def _patched(self) -> Iterator[None]:
        saved: list[tuple[Any, str, Any]] = []

        def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
            original = getattr(owner, name)
            saved.append((owner, name, original))
            setattr(owner, name, make(original))

        for name in HOST_COPIES:
            patch(torch.Tensor, name, lambda f, name=name: self._host_copy(f, name))
        patch(torch.Tensor, "to", self._to)
        for name in FACTORIES:
            patch(torch, name, self._factory)
        try:
            yield
        finally:
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)

    def _host_copy(self, original: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.is_on_device(t) and not self._busy:
                self._record(f"Tensor.{name}()")
            busy, self._busy = self._busy, True  # .numpy() inside .tolist() is one copy
            try:
                out = original(t, *args, **kwargs)
            finally:
                self._busy = busy
            return out

        return wrapper

    def _to(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            target = _target(args, kwargs)
            if target == "host":
                if self.is_on_device(t) and not self._busy:
                    self._record('Tensor.to("cpu")')
                return original(t, *args, **kwargs)
            out = original(t, *args, **kwargs)
            if target == "device" and not self.is_on_device(out):
                if out is t:  # a no-op on CPU; on a GPU a new device tensor
                    out = t.view_as(t)
                self.on_device(out)
            return out

        return wrapper

    def _factory(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if _target((), kwargs) == "device" and isinstance(out, torch.Tensor):
                self.on_device(out)
            return out

        return wrapper

    def __enter__(self) -> HostSyncCounter:
        self._patch = self._patched()
        self._patch.__enter__()
        return super().__enter__()  # type: ignore[no-any-return]

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._patch.__exit__(*exc)


def _bool_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
        for i in (indices or ())
    )


def model_tensors(*modules: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of ``modules``."""
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


# Reads inside transformers that a step on its models makes and mechtune cannot avoid
# without patching the library: (file, function). Each one reads a scalar per forward.
KNOWN_LIBRARY_SYNCS = (
    # SDPA: "can the causal mask be dropped for is_causal?" reads the padding mask
    ("transformers/masking_utils.py", "_ignore_causal_mask_sdpa"),
    # Gemma 3: the image-token count checked against the image features (and formatted
    # into the error message before the check)
    ("transformers/models/gemma3/modeling_gemma3.py", "get_placeholder_mask"),
)


def library_site(transfer: Transfer) -> str | None:
    """The known transformers read (:data:`KNOWN_LIBRARY_SYNCS`) a transfer comes from, or
    None when it comes from elsewhere (mechtune's code, or a read nobody has listed)."""
    for frame in reversed(transfer.stack):
        location, _, function = frame.partition(" ")
        for path, name in KNOWN_LIBRARY_SYNCS:
            if function == name and location.rsplit(":", 1)[0].endswith(path):
                return f"{path}:{name}"
    return None


def unlisted(transfers: Iterable[Transfer]) -> list[Transfer]:
    """The transfers that are not known transformers reads."""
    return [t for t in transfers if library_site(t) is None]
