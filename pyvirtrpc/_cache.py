"""Small bounded caches for what an open recomputes from unchanged inputs.

Contract:

* :func:`remember` stores ``key -> value`` in a plain dict, first emptying
  it when it holds ``limit`` entries: memory stays bounded whatever keys an
  application (or a hostile input) produces, and no eviction order is kept.
* :func:`file_sig` identifies a file's current contents for a cache key
  (device, inode, size, modification time), or None when it cannot be
  stat()ed; a file replaced or edited gets a new signature.
* No I/O beyond ``os.stat``; nothing here is thread-unsafe under the GIL
  (a lost race only computes a value twice).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional


def remember(cache: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """``cache[key] = value``, emptying the cache first when it is full."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


def file_sig(path: Optional[str]) -> Optional[tuple[int, int, int, int]]:
    """(device, inode, size, mtime in ns) of ``path``; None if it cannot be stat()ed."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
