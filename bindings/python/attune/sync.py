"""Attune without ``await``: for scripts, notebooks and Flower clients.

Every method of :class:`attune.Personalizer` is here as a plain blocking
call with the same arguments and results. The coroutines run on one event
loop that this module keeps on a thread of its own, so a call works the same
from a script, from a thread, and from a notebook whose own loop is running.

>>> import attune.sync
>>> with attune.sync.Personalizer.open(attune.Config(database_path=DATABASE_PATH, model_dir=MODEL_DIR)) as p:
...     p.describe_label("intents", "weather", "a question about the weather forecast")
...     p.describe_label("intents", "music", "a request to play music")
...     p.predict_one("intents", "put on a song").labels[0].label
'music'
"""

import asyncio
import functools
import inspect
import threading
import typing

from . import attune_ffi as _ffi

__all__ = ["Personalizer", "Model", "run"]

_T = typing.TypeVar("_T")
_loop: typing.Optional[asyncio.AbstractEventLoop] = None
_loop_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    """The module's event loop, started on a daemon thread on first use."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="attune-sync", daemon=True).start()
            _loop = loop
        return _loop


def run(awaitable: typing.Awaitable[_T]) -> _T:
    """Waits for ``awaitable`` on the module's loop and returns its result
    (or raises its exception, ``AttuneError`` subclasses included)."""

    async def wrapped() -> _T:
        return await awaitable

    return asyncio.run_coroutine_threadsafe(wrapped(), _background_loop()).result()


class Personalizer:
    """A blocking :class:`attune.Personalizer`: the same methods, without
    ``await``. Use it as a context manager, or call ``close()``."""

    def __init__(self, inner: _ffi.Personalizer) -> None:
        self._inner = inner

    @classmethod
    def open(cls, config: _ffi.Config) -> "Personalizer":
        """Opens (or creates) the database and loads the model."""
        return cls(run(_ffi.Personalizer.open(config)))

    @classmethod
    def open_with_model(
        cls, database_path: str, model: "Model", encryption_key: typing.Optional[_ffi.EncryptionKey] = None
    ) -> "Personalizer":
        """Opens the database with a model already loaded by :meth:`Model.load`."""
        return cls(run(_ffi.Personalizer.open_with_model(database_path, model.inner, encryption_key)))

    @property
    def inner(self) -> _ffi.Personalizer:
        """The asynchronous object this one drives."""
        return self._inner

    def __getattr__(self, name: str) -> typing.Any:
        method = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(method):
            return method

        @functools.wraps(method)
        def blocking(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
            return run(method(*args, **kwargs))

        return blocking

    def __enter__(self) -> "Personalizer":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the calls in flight, waits for them and closes the database."""
        self._inner.close()

    def __repr__(self) -> str:
        return repr(self._inner)


class Model:
    """A blocking :class:`attune.Model`: a backbone loaded once and shared."""

    def __init__(self, inner: _ffi.Model) -> None:
        self.inner = inner

    @classmethod
    def load(
        cls,
        model_dir: str,
        backend: typing.Optional[_ffi.Backend] = None,
        threads: typing.Optional[int] = None,
        ort_library: typing.Optional[str] = None,
    ) -> "Model":
        return cls(run(_ffi.Model.load(model_dir, backend, threads, ort_library)))

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def dimension(self) -> int:
        return self.inner.dimension()
