"""Hiding every tqdm bar but one's own (written against tqdm 4.70): ``tqdm.std.tqdm.__init__`` is wrapped for the
block so that a bar whose ``desc`` does not start with a given prefix is created disabled."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

#: the tqdm release this patch was written against
WRITTEN_AGAINST = "4.70"


@contextlib.contextmanager
def only_bars_starting_with(prefix: str) -> Iterator[None]:
    """Every tqdm bar created in the block is disabled unless its ``desc`` starts with ``prefix``."""
    import tqdm.std

    stored = vars(tqdm.std.tqdm)["__init__"]  # restored as it was stored (tqdm 4.70 stores a partialmethod)
    original = tqdm.std.tqdm.__init__

    def init(self, *args: Any, **kwargs: Any) -> None:
        if not str(kwargs.get("desc") or "").startswith(prefix):
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = stored  # type: ignore[method-assign]
