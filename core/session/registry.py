"""One live :class:`~core.session.workbench.Workbench` per id per server: every tab and every refresh
of a workbench gets the same object, hence the same job runner and current version. Idle
workbenches are dropped from memory and reopen from the store when asked for again."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from core.data import ImageDataset
from core.session.jobs import ComputeBudget
from core.session.store import Store
from core.session.workbench import Workbench

log = logging.getLogger(__name__)

DEFAULT_IDLE_S = 1800.0


class WorkbenchRegistry:
    """Server-wide map id -> live workbench, guarded by a lock.

    ``loader(source, seed=...)`` loads datasets (the app passes a cached one); ``budget`` is
    the server's :class:`ComputeBudget`, shared by every workbench's jobs. A workbench that
    nobody asked for in ``idle_s`` seconds and that runs no job is dropped from memory (its
    state is all in the store).
    """

    def __init__(self, store: Store, *, loader: Callable[..., ImageDataset] | None = None,
                 budget: ComputeBudget | None = None, idle_s: float = DEFAULT_IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.loader = loader
        self.budget = budget or ComputeBudget(1)
        self.idle_s = float(idle_s)
        self._clock = clock
        self._lock = threading.Lock()  # guards the dicts below; held only for a look-up or a change
        # one per id, held across an open and across a delete: two tabs never open one id twice,
        # a delete never runs while the id is being opened, and two ids open at the same time
        self._id_locks: dict[str, threading.Lock] = {}
        self._deleted: set[str] = set()  # tombstones: ids deleted through this registry
        self._live: dict[str, Workbench] = {}
        self._seen: dict[str, float] = {}
        self._generation = store.generation

    def get(self, wb_id: str) -> Workbench:
        """The live workbench ``wb_id``, opened from the store if it is not in memory.

        Raises ``KeyError`` (unknown or deleted id), :class:`core.session.workbench.WorkbenchError` (no
        versions), and what opening its data or checkpoint raises.
        """
        self.store.check_present()
        self._forget_if_workspace_recreated()
        self.evict_idle()
        with self._lock:
            wb = self._live.get(wb_id)
            if wb is not None:
                self._seen[wb_id] = self._clock()
                return wb
        with self._id_lock(wb_id):
            with self._lock:  # another thread may have opened (or deleted) it while we waited
                self._refuse_deleted(wb_id)
                wb = self._live.get(wb_id)
            if wb is None:
                wb = Workbench.open(self.store, wb_id, loader=self.loader, budget=self.budget)
            return self.add(wb)

    def add(self, wb: Workbench) -> Workbench:
        """Register a workbench just created; returns the live one for its id (``KeyError``
        for one deleted meanwhile)."""
        with self._lock:
            self._refuse_deleted(wb.id)
            live = self._live.setdefault(wb.id, wb)
            self._seen[wb.id] = self._clock()
            return live

    def delete(self, wb_id: str) -> None:
        """Delete workbench ``wb_id``: its rows and its files. Refused with ``ValueError``
        while one of its jobs runs (stop it first); ``KeyError`` for an unknown id.

        Holds the id's lock throughout, so it waits for an open of the same id in progress
        and no open starts until it is done; afterwards the id is refused (a tombstone), and
        a job of the deleted workbench that ends later cannot save a version into its folder
        (:meth:`core.session.store.Store.commit_version` refuses a deleted workbench)."""
        with self._id_lock(wb_id):
            if self.store.get_workbench(wb_id) is None:
                raise KeyError(f"No workbench {wb_id!r}.")
            with self._lock:
                wb = self._live.get(wb_id)
                if wb is not None and wb.jobs.current is not None and wb.jobs.current.running:
                    raise ValueError(f"Workbench {wb_id} is training; stop its job before deleting it.")
                self._deleted.add(wb_id)
                self._live.pop(wb_id, None)
                self._seen.pop(wb_id, None)
            try:
                self.store.delete_workbench(wb_id, files=True)
            except BaseException:
                with self._lock:  # its rows are still there: it can be opened again
                    self._deleted.discard(wb_id)
                raise

    def _id_lock(self, wb_id: str) -> threading.Lock:
        with self._lock:
            return self._id_locks.setdefault(wb_id, threading.Lock())

    def _refuse_deleted(self, wb_id: str) -> None:
        """``KeyError`` when ``wb_id`` was deleted (call with ``_lock`` held)."""
        if wb_id in self._deleted:
            raise KeyError(f"Workbench {wb_id!r} was deleted.")

    def set_label(self, wb_id: str, *, name: str | None = None, note: str | None = None) -> None:
        """Rename a workbench or change its note (kept in its settings; shown in the list).
        The live object, if any, sees the change at once."""
        values = {k: v.strip() for k, v in (("name", name), ("note", note)) if v is not None}
        if "name" in values and len(values["name"]) > 80:
            raise ValueError("A name can be at most 80 characters.")
        if "note" in values and len(values["note"]) > 2000:
            raise ValueError("A note can be at most 2,000 characters.")
        with self._lock:
            wb = self._live.get(wb_id)
        if wb is not None:
            wb.update_settings(**values)
            return
        record = self.store.get_workbench(wb_id)
        if record is None:
            raise KeyError(f"No workbench {wb_id!r}.")
        self.store.update_workbench(wb_id, settings={**record.settings, **values})

    def evict_idle(self) -> list[str]:
        """Drop workbenches idle for more than ``idle_s`` that run no job; returns their ids."""
        now = self._clock()
        with self._lock:
            idle = [i for i, t in self._seen.items() if now - t > self.idle_s
                    and not (self._live[i].jobs.current is not None and self._live[i].jobs.current.running)]
            for i in idle:
                del self._live[i], self._seen[i]
        if idle:
            log.info("dropped %d idle workbenches from memory", len(idle))
        return idle

    def _forget_if_workspace_recreated(self) -> None:
        """The workspace folder was deleted under the server: the live objects point at
        versions that no longer exist, so forget them (the app then starts afresh)."""
        if self.store.generation != self._generation:
            with self._lock:
                self._live.clear()
                self._seen.clear()
                self._deleted.clear()  # a new workspace: its ids are its own
                self._generation = self.store.generation
