"""A Flask-Caching backend: ``CACHE_TYPE = "arrowpool.flask_caching.ArrowpoolCache"``.

The ``@cache.memoize`` pattern that Dash's documentation recommends for sharing
data between callbacks then keeps its values in arrowpool, shared by every worker
process on the machine::

    from flask_caching import Cache
    cache = Cache(app.server, config={"CACHE_TYPE": "arrowpool.flask_caching.ArrowpoolCache"})

    @cache.memoize(timeout=600)
    def orders(company):            # the DataFrame is stored once, as a table
        return pd.read_parquet(f"{company}.parquet")

How values are kept:

- pandas DataFrames, pyarrow Tables and RecordBatches, and polars DataFrames are
  stored as Arrow tables; a hit gives the same kind back, built over the arena
  without copying what Arrow and pandas can share (``Client.get_pandas``: numeric
  columns of one-batch tables, strings' character data).
- Anything else is pickled and stored as a blob.
- Timeouts: the expiry time travels with the value (schema metadata of a table,
  a 16-byte header of a blob); an expired value is a miss and is deleted on
  sight. 0 never expires; the default is ``CACHE_DEFAULT_TIMEOUT`` (300 s).
- Names are ``CACHE_KEY_PREFIX`` (``flask_cache_``) + key. ``clear()`` deletes every
  name with the prefix; ``add()`` checks, then sets (two requests: not atomic
  between processes, like the simple backends).
- The server's memory cap applies: least-recently-used values are evicted when a
  new one does not fit, which the cache sees as a miss.

Config keys: ``CACHE_ARROWPOOL_SOCKET`` (a server you run yourself; default: this
user's server, started when none runs, see :func:`arrowpool.connect`),
``CACHE_ARROWPOOL_MEMORY`` (that server's memory cap, if this process starts it).
"""

from __future__ import annotations

import json
import pickle
import struct
import time
from typing import Any

import pyarrow as pa
from flask_caching.backends.base import BaseCache

from .client import Client, connect
from .errors import NotFound

#: Schema metadata key of a cached table: JSON ``{"kind": ..., "expires": ...}``.
META_KEY = b"arrowpool.cache"
#: A cached blob starts with this magic and its expiry (f64, seconds since the epoch, 0: never).
BLOB_MAGIC = b"APCACHE1"
_HEADER = struct.Struct("<8sd")


def _kind(value: Any) -> str | None:
    module = type(value).__module__ or ""
    if isinstance(value, pa.Table):
        return "arrow"
    if isinstance(value, pa.RecordBatch):
        return "arrow-batch"
    if module.startswith("pandas") and type(value).__name__ == "DataFrame":
        return "pandas"
    if module.startswith("polars") and type(value).__name__ == "DataFrame":
        return "polars"
    return None


class ArrowpoolCache(BaseCache):
    """Flask-Caching backend over an arrowpool server (module doc)."""

    def __init__(
        self,
        default_timeout: int = 300,
        key_prefix: str = "flask_cache_",
        socket: str | None = None,
        memory: str | None = None,
        client: Client | None = None,
        ignore_delete_many_errors: bool = False,
    ):
        super().__init__(
            default_timeout=default_timeout, ignore_delete_many_errors=ignore_delete_many_errors
        )
        self.key_prefix = key_prefix or ""
        self._socket = socket
        self._memory = memory
        self._client = client

    @classmethod
    def factory(cls, app, config, args, kwargs):
        kwargs.update(
            default_timeout=config.get("CACHE_DEFAULT_TIMEOUT", 300),
            key_prefix=config.get("CACHE_KEY_PREFIX") or "flask_cache_",
            socket=config.get("CACHE_ARROWPOOL_SOCKET"),
            memory=config.get("CACHE_ARROWPOOL_MEMORY"),
        )
        return cls(*args, **kwargs)

    @property
    def client(self) -> Client:
        """The connection, made on first use (a Client also reconnects by itself
        in a forked worker)."""
        if self._client is None:
            self._client = connect(self._socket, memory=self._memory)
        return self._client

    def _name(self, key: str) -> str:
        return f"{self.key_prefix}{key}"

    def _expires(self, timeout) -> float:
        t = self._normalize_timeout(timeout)
        return time.time() + t if t > 0 else 0.0

    @staticmethod
    def _expired(expires: float) -> bool:
        return 0 < expires <= time.time()

    def set(self, key: str, value: Any, timeout=None) -> bool:
        name = self._name(key)
        expires = self._expires(timeout)
        kind = _kind(value)
        if kind is None:
            payload = _HEADER.pack(BLOB_MAGIC, expires) + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            self.client.put_bytes(name, payload)
            return True
        if kind == "pandas":
            table = pa.Table.from_pandas(value)
        elif kind == "polars":
            table = value.to_arrow()
        elif kind == "arrow-batch":
            table = pa.Table.from_batches([value])
        else:
            table = value
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps({"kind": kind, "expires": expires}).encode()
        self.client.put(name, table.replace_schema_metadata(meta))
        return True

    def get(self, key: str) -> Any:
        name = self._name(key)
        client = self.client
        try:
            found = client.get_object(name)
        except NotFound:
            return None
        if isinstance(found, pa.Table):
            meta = found.schema.metadata or {}
            info = json.loads(meta.get(META_KEY, b"{}"))
            if self._expired(float(info.get("expires", 0))):
                self._forget(name)
                return None
            kind = info.get("kind", "arrow")
            rest = {k: v for k, v in meta.items() if k != META_KEY}
            table = found.replace_schema_metadata(rest or None)
            if kind == "pandas":
                return table.to_pandas(split_blocks=True, self_destruct=False, zero_copy_only=False)
            if kind == "polars":
                import polars as pl

                return pl.from_arrow(table, rechunk=False)
            if kind == "arrow-batch":
                batches = table.combine_chunks().to_batches()
                if batches:
                    return batches[0]
                return pa.RecordBatch.from_arrays(
                    [pa.array([], type=f.type) for f in table.schema], schema=table.schema
                )
            return table
        if len(found) < _HEADER.size or found[:8] != BLOB_MAGIC:
            return None  # a blob this backend did not write
        _, expires = _HEADER.unpack_from(found)
        if self._expired(expires):
            self._forget(name)
            return None
        return pickle.loads(found[_HEADER.size :])

    def _forget(self, name: str) -> None:
        try:
            self.client.delete(name)
        except NotFound:
            pass

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    def add(self, key: str, value: Any, timeout=None) -> bool:
        if self.has(key):
            return False
        return self.set(key, value, timeout)

    def delete(self, key: str) -> bool:
        try:
            self.client.delete(self._name(key))
            return True
        except NotFound:
            return False

    def clear(self) -> bool:
        for entry in self.client.list():
            if entry["name"].startswith(self.key_prefix):
                self._forget(entry["name"])
        return True
