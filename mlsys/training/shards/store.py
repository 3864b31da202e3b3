"""The shard store shared by Spill and SHARP: how a shard's tensors are laid out in one
buffer or file (:class:`Slot`, :class:`Layout`, every tensor on an :data:`ALIGN`-byte
boundary), the tiers Spill keeps shard images in (:class:`HostTier`, :class:`DiskTier`,
with the :class:`Pool` of buffers they reuse), the helpers that write, read and map those
files (shared or private mappings, pages faulted in or dropped), SHARP's shard files and
the mappings a device keeps of them (:func:`create`, :func:`slot_views`, :class:`Mappings`),
and the check of an offload folder (:func:`check_folder`) both apply."""

from __future__ import annotations

import ctypes
import errno
import functools
import math
import mmap
import os
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mlsys.atomic import atomic_write

__all__ = [
    "ALIGN",
    "EMPTY_LAYOUT",
    "DiskTier",
    "HostTier",
    "Layout",
    "Mappings",
    "Pool",
    "Slot",
    "SpillIOError",
    "Tier",
    "check_folder",
    "create",
    "file_layout",
    "io_error",
    "is_packed",
    "map_file",
    "pack_into",
    "plan_layout",
    "release_pages",
    "slot_view",
    "slot_views",
    "tensor_nbytes",
    "touch",
]

ALIGN = 64  # bytes; every tensor of a shard image or file starts on a cache line
_OWN_MAP_BYTES = 1 << 20  # images this large get a memory map of their own


class SpillIOError(OSError):
    """Reading or writing the offload folder failed (the disk is full, a file vanished);
    the message names the file, the size and the cause."""


# --- slots: a shard's tensors laid out in one buffer or file --------------------------------


@dataclass(frozen=True)
class Slot:
    """Where one tensor sits in a shard image or file. Spill keys them ``p<j>`` (parameter
    j), ``b<j>`` (buffer j) or ``s<j>.<name>`` (optimizer state ``name`` of parameter j);
    SHARP by state-dict key, or ``<param>.<name>`` for optimizer state. ``host`` marks state
    the optimizer keeps on the CPU while the parameters are on CUDA (Adam's step count)."""

    key: str
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    host: bool = False

    def record(self) -> tuple[str, int, tuple[int, ...], str]:
        """The slot as plain values (the dtype by name), for a metadata file that
        ``torch.load(weights_only=True)`` reads back."""
        return self.key, self.offset, self.shape, str(self.dtype).removeprefix("torch.")

    @classmethod
    def from_record(cls, record: tuple[str, int, tuple[int, ...], str]) -> Slot:
        key, offset, shape, dtype_name = record
        dtype = getattr(torch, dtype_name)
        assert isinstance(dtype, torch.dtype), dtype_name
        return cls(key, offset, math.prod(shape) * dtype.itemsize, tuple(shape), dtype)


@dataclass(frozen=True)
class Layout:
    slots: tuple[Slot, ...] = ()
    nbytes: int = 0


EMPTY_LAYOUT = Layout()


def slot_view(buffer: torch.Tensor, slot: Slot) -> torch.Tensor:
    raw = buffer[slot.offset : slot.offset + slot.nbytes]
    return raw.view(slot.dtype).view(slot.shape)


def pack_into(image: torch.Tensor, layout: Layout, tensors: list[torch.Tensor]) -> None:
    """Copy ``tensors`` into their slots, letting go of each once copied (the list holds
    the last reference to a new optimizer state, so it is freed as the image fills)."""
    for i, slot in enumerate(layout.slots):
        slot_view(image, slot).copy_(tensors[i])
        tensors[i] = image[:0]


def is_packed(buffer: torch.Tensor | None, layout: Layout, tensors: Sequence[torch.Tensor]) -> bool:
    """Whether ``tensors`` already are the views of ``buffer`` that ``layout`` describes
    (then writing the image back needs no copy); state kept on the host is copied apart."""
    if buffer is None or buffer.numel() != layout.nbytes:
        return False
    base = buffer.data_ptr()
    return all(
        slot.host or (t.data_ptr() == base + slot.offset and t.is_contiguous())
        for slot, t in zip(layout.slots, tensors, strict=True)
    )


def plan_layout(
    tensors: Sequence[tuple[str, torch.Tensor]], device: torch.device | None = None
) -> Layout:
    """Where each tensor goes, one after another on :data:`ALIGN`-byte boundaries, and the
    bytes they take together; with a non-CPU ``device``, tensors on the CPU are marked
    ``host``."""
    slots, offset = [], 0
    for key, t in tensors:
        host = device is not None and device.type != "cpu" and t.device.type == "cpu"
        slots.append(Slot(key, offset, tensor_nbytes(t), tuple(t.shape), t.dtype, host))
        offset += -(-tensor_nbytes(t) // ALIGN) * ALIGN
    return Layout(tuple(slots), offset)


def file_layout(tensors: Sequence[tuple[str, torch.Tensor]]) -> tuple[list[Slot], int]:
    """Where each tensor goes in a file, and the file's size (at least :data:`ALIGN` bytes:
    an empty file can't be mapped)."""
    planned = plan_layout(tensors)
    return list(planned.slots), max(planned.nbytes, ALIGN)


# --- Spill's tiers: where shards live while they are off the device ------------------------


class HostTier:
    """Images in host memory (pinned for CUDA, so copies overlap compute). On a CPU device
    the image *is* the device copy: loading and writing back cost nothing."""

    def __init__(self) -> None:
        self._images: dict[str, torch.Tensor] = {}
        self._tensors: dict[str, torch.Tensor] = {}

    def write(self, name: str, image: torch.Tensor) -> None:
        self._images[name] = image

    def read(self, name: str, nbytes: int, pin: bool) -> torch.Tensor:
        return self._images[name]

    def mapped(self, name: str, nbytes: int) -> torch.Tensor:
        return self._images[name]

    def put_tensor(self, name: str, tensor: torch.Tensor) -> None:
        self._tensors[name] = tensor

    def get_tensor(self, name: str, pin: bool) -> torch.Tensor:
        return self._tensors.pop(name)

    def drop_pages(self) -> None:
        """Nothing is mapped from files."""

    def close(self) -> None:
        self._images.clear()
        self._tensors.clear()


class DiskTier:
    """Images in files of a private folder under ``folder``, one per shard and part.

    Loading a shard for a CPU device maps its file (shared, populated in the I/O thread:
    the pages come from the page cache without a copy), and the shard's tensors are views of
    that mapping: the optimizer's updates land in the file's pages, so writing the shard
    back costs nothing, and letting go of the image unmaps it. A mapping's pages count
    toward the process's RSS only while it is mapped, the same as a buffer read into.
    Loading for CUDA reads the file into a pinned buffer from the pool. Images that are
    not a mapping of their own file (a new layout, packed from separate tensors) are
    written with explicit writes, in place (same size: no new blocks, so steady-state
    training can't run out of disk) or truncated to the new size. Checkpoints and the
    trained model read the files through private mappings, whose pages a checkpoint drops
    as soon as they are copied (:meth:`drop_pages`)."""

    def __init__(self, folder: Path, pool: Pool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="spill-", dir=folder))
        self._shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._mapped: list[torch.Tensor] = []
        # The newest shared mapping of each shard file: writing it back is a no-op.
        self._live: dict[str, weakref.ref[torch.Tensor]] = {}
        self.pool = pool

    def path(self, name: str) -> Path:
        return self.root / f"shard-{name}.bin"

    def write(self, name: str, image: torch.Tensor) -> None:
        live = self._live.get(name)
        if live is not None and live() is image:
            return  # a shared mapping of this very file: its pages are the file's
        path = self.path(name)
        try:
            write_file(path, image.numpy().data)
        except OSError as exc:
            raise io_error(
                exc, f"writing {name} ({image.numel()} bytes) to {path}", self.root.parent
            ) from exc

    def read(self, name: str, nbytes: int, pin: bool, *, shard: bool = True) -> torch.Tensor:
        """The file ``name``: for the CPU a shared mapping of it (a ``shard`` image's is
        remembered, so that writing it back is a no-op); for CUDA a pinned copy, in a buffer
        from the pool for a shard image."""
        path = self.path(name)
        try:
            if not pin:
                image = map_shared(path, nbytes)
                if shard:
                    self._live[name] = weakref.ref(image)
                return image
            image = self.pool.take(nbytes, pin) if shard else empty_buffer(nbytes, pin)
            read_file(path, image.numpy().data)
        except OSError as exc:
            raise io_error(
                exc, f"reading {name} ({nbytes} bytes) from {path}", self.root.parent
            ) from exc
        return image

    def mapped(self, name: str, nbytes: int) -> torch.Tensor:
        image = map_file(self.path(name), nbytes, shared=False)
        self._mapped.append(image)
        return image

    def put_tensor(self, name: str, tensor: torch.Tensor) -> None:
        self._shapes[name] = (tuple(tensor.shape), tensor.dtype)
        self.write(name, tensor.reshape(-1).view(torch.uint8))

    def get_tensor(self, name: str, pin: bool) -> torch.Tensor:
        shape, dtype = self._shapes[name]
        nbytes = _itemsize(dtype) * _numel(shape)
        if not nbytes:
            return torch.empty(shape, dtype=dtype, pin_memory=pin)
        # On CPU a shared mapping of the file (no copy, no fresh pages); a first layer
        # that works in place writes into the file, which the next forward rewrites first.
        return self.read(name, nbytes, pin, shard=False).view(dtype).view(shape)

    def drop_pages(self) -> None:
        """Drop the pages of every mapped image from this process (they stay in the page
        cache); the next touch reads them again."""
        for image in self._mapped:
            release_pages(image)

    def forget_mapped(self) -> None:
        self._mapped.clear()

    def close(self) -> None:
        """Remove the folder; mapped images stay readable (their files are only unlinked)."""
        self._mapped.clear()
        shutil.rmtree(self.root, ignore_errors=True)


Tier = HostTier | DiskTier


class Pool:
    """Buffers to reuse, by exact size: a freed one waits for the next request of its size,
    up to ``limit`` bytes waiting (the longest-waiting ones are let go first). Filling a
    buffer already in memory runs ten times faster than fresh memory, which takes a page
    fault per page."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free: list[tuple[tuple[int, bool], torch.Tensor]] = []  # oldest first
        self._ours: set[int] = set()
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int, pin: bool) -> torch.Tensor:
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):
                if self._free[i][0] == (nbytes, pin):
                    self._bytes -= nbytes
                    return self._free.pop(i)[1]
        image = empty_buffer(nbytes, pin)
        with self._lock:
            self._ours.add(image.data_ptr())
        return image

    def give(self, image: torch.Tensor) -> None:
        """Keep ``image`` (one this pool made, and nobody uses any more) for reuse."""
        nbytes = image.numel()
        key = (nbytes, image.is_pinned())
        with self._lock:
            whole = image.untyped_storage().nbytes() == nbytes and not image.storage_offset()
            if image.data_ptr() not in self._ours or not whole or not nbytes:
                return
            if nbytes > self.limit:
                self._ours.discard(image.data_ptr())
                return
            self._free.append((key, image))
            self._bytes += nbytes
            while self._bytes > self.limit:
                (old, _), dropped = self._free.pop(0)
                self._bytes -= old
                self._ours.discard(dropped.data_ptr())

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._ours.clear()
            self._bytes = 0


def empty_buffer(nbytes: int, pin: bool) -> torch.Tensor:
    """A buffer for a shard image. Large host ones are anonymous memory maps of their own,
    not malloc blocks, so that freeing one gives its memory back to the system at once
    (glibc keeps freed blocks under its adaptive mmap threshold in its heap)."""
    if pin or nbytes < _OWN_MAP_BYTES:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=torch.uint8)


def write_file(path: Path, data: memoryview) -> None:
    """Write ``data`` as the whole content of ``path``, in place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], done)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def map_shared(path: Path, nbytes: int) -> torch.Tensor:
    """The first ``nbytes`` of ``path`` as a shared, writable mapping, its pages populated
    now (from the page cache, or read from disk here rather than on first touch); unmapped
    when the last tensor viewing it is freed."""
    fd = os.open(path, os.O_RDWR)
    try:
        if os.fstat(fd).st_size < nbytes:
            raise OSError(errno.EIO, f"{path} is shorter than {nbytes} bytes")
        mapping = mmap.mmap(fd, nbytes, mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    finally:
        os.close(fd)
    return torch.frombuffer(mapping, dtype=torch.uint8)


def read_file(path: Path, into: memoryview) -> None:
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < len(into):
            n = f.readinto(into[done:])
            if not n:
                raise OSError(errno.EIO, f"{path} ends after {done} of {len(into)} bytes")
            done += n


def io_error(exc: OSError, what: str, folder: Path) -> SpillIOError:
    cause = exc.strerror or str(exc)
    hint = ""
    if exc.errno == errno.ENOSPC:
        hint = f"; free space in {folder} or write to a larger disk"
    return SpillIOError(exc.errno or errno.EIO, f"{what} failed: {cause}{hint}")


def map_file(path: Path, nbytes: int, *, shared: bool = True) -> torch.Tensor:
    """The first ``nbytes`` of ``path`` as a byte tensor, mapped as needed: ``shared``,
    writes go to the file and other mappings see them; otherwise a private copy-on-write
    mapping."""
    return torch.from_file(str(path), shared=shared, size=nbytes, dtype=torch.uint8)


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    madvise: Callable[[int, int, int], int] = libc.madvise
    return madvise


def release_pages(mapped: torch.Tensor) -> None:
    """``madvise(MADV_DONTNEED)`` over the whole pages of a tensor that is a private,
    unmodified file mapping: the process lets go of them (they are still in the page cache
    and read back on the next touch). Never call it on anonymous memory: that would zero it."""
    madvise = _madvise()
    nbytes = mapped.numel() * mapped.element_size()
    if madvise is None or nbytes == 0:
        return
    page = os.sysconf("SC_PAGE_SIZE")
    start = -(-mapped.data_ptr() // page) * page
    stop = (mapped.data_ptr() + nbytes) // page * page
    if stop > start:
        madvise(start, stop - start, 4)  # MADV_DONTNEED


# --- SHARP's shard files: raw tensors, mapped shared by the device that runs the shard ------


def slot_views(buffer: torch.Tensor, slots: Sequence[Slot]) -> dict[str, torch.Tensor]:
    """A tensor per slot on the buffer's memory. Not autograd views of the buffer: views
    share their base's version counter, so batch norm updating its running mean in place
    would look to autograd like a change of the weights saved for backward."""
    storage = buffer.untyped_storage()
    out = {}
    for s in slots:
        stride = [math.prod(s.shape[i + 1 :]) for i in range(len(s.shape))]
        out[s.key] = torch.empty(0, dtype=s.dtype).set_(
            storage, s.offset // s.dtype.itemsize, s.shape, stride
        )
    return out


def touch(buffer: torch.Tensor) -> None:
    """Fault every page of a mapping in (one byte per page), so compute doesn't."""
    if buffer.numel():
        int(buffer[:: mmap.PAGESIZE].sum())


def create(path: Path, tensors: Sequence[tuple[str, torch.Tensor]]) -> list[Slot]:
    """Write ``tensors`` to a new file at ``path`` (atomically); returns their slots."""
    slots, nbytes = file_layout(tensors)
    try:
        # Written, not copied into a mapping: the kernel fills the pages in one call per
        # tensor, about twice as fast as faulting a new mapping in page by page, and a full
        # file system fails the write with ENOSPC instead of the copy with SIGBUS.
        with atomic_write(path) as f:
            for slot, (_, tensor) in zip(slots, tensors, strict=True):
                f.seek(slot.offset)
                f.write(
                    tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data
                )
            f.truncate(nbytes)
    except OSError as exc:
        raise OSError(exc.errno, f"writing {path} failed: {exc.strerror or exc}") from exc
    return slots


class Mappings:
    """A device's mappings of shard files, kept from unit to unit: a shard it ran before
    needs no new mapping and no page faults (about 2 ms per 16 MB here), only fresh views.

    The pages are the files' own (shared memory, or the page cache of ``offload="disk"``):
    keeping a mapping copies nothing. A file replaced since it was mapped (an optimizer
    state whose layout changed) has a new inode, and is mapped again; a kept mapping holds
    its file's inode, so the number can't be reused by another file meanwhile."""

    def __init__(self) -> None:
        self._kept: dict[Path, tuple[int, torch.Tensor]] = {}

    def get(self, path: Path, nbytes: int) -> torch.Tensor:
        """``path`` as a byte tensor of ``nbytes``, its pages faulted in."""
        inode = path.stat().st_ino
        kept = self._kept.get(path)
        if kept is not None and kept[0] == inode and kept[1].numel() == nbytes:
            return kept[1]
        buffer = map_file(path, nbytes)
        touch(buffer)
        self._kept[path] = (inode, buffer)
        return buffer

    def forget(self, folder: Path) -> None:
        """Unmap every file under ``folder`` (a job that finished or failed)."""
        for path in [p for p in self._kept if p.is_relative_to(folder)]:
            del self._kept[path]


# --- the offload folder --------------------------------------------------------------------


def check_folder(folder: Path, owner: str) -> None:
    """Raise ValueError naming ``folder`` unless it is an existing directory in which this
    process can create a file (tried, not guessed from its mode: root, read-only mounts and
    immutable folders defeat ``os.access``). ``owner`` names the trainer in the message."""
    if not folder.is_dir():
        raise ValueError(
            f"{owner} folder {folder} is not a directory; create it first, or pass "
            f"folder=None for a temporary one"
        )
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(
            f"{owner} folder {folder} is not writable ({exc.strerror or exc}); pass a folder "
            f"this process can write to, or folder=None for a temporary one"
        ) from exc


def tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()
