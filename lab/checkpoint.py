"""Checkpoint file format, shared by reference/ and torch_port/ (not math: written once).

One ``.npz`` file (a zip of .npy arrays), readable with ``np.load`` and no pickle:

  params/<name>   the model's parameters, keyed by the port's state_dict() names (conv OIHW, linear (out, in))
  ema/<name>      the EMA copy of the parameters (O2), if any
  opt/<key>       the optimiser state, a flat dict of arrays and scalars (scalars become 0-d arrays)
  rng/<key>       array-valued entries of rng_state (e.g. torch's RNG state, a uint8 array)
  extra/<key>     array-valued entries of ``extra``
  meta            a JSON string: {"format", "version", "step", "config", "rng_state", "extra"}
                  holding the JSON-able parts (e.g. numpy's bit_generator.state dict)

Values are NumPy arrays, so one file loads on both sides (the torch side converts). ``save`` is
atomic: it writes a temporary file in the same folder, flushes and fsyncs it, then ``os.replace``s
it over the target, so a crash mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import dataclasses
import json
import zipfile
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reference.errors import InputError

FORMAT = "ddpm-executable-checkpoint"
VERSION = 1
_GROUPS = ("params", "ema", "opt", "rng", "extra")


@dataclass
class Checkpoint:
    """What ``load`` returns. ``params``/``ema``/``opt_state`` map names to NumPy arrays."""

    params: dict
    ema: dict | None = None
    opt_state: dict | None = None
    config: dict = field(default_factory=dict)
    step: int = 0
    rng_state: dict | None = None
    extra: dict = field(default_factory=dict)
    path: str | None = None
    version: int = VERSION


# ---- saving ---------------------------------------------------------------------------------------

def _to_numpy(v, where):
    """A NumPy array from an array, a scalar or a torch tensor (detached, on the CPU)."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.dtype == object or a.dtype.kind in "USV":
        raise InputError(f"checkpoint entry {where} must be numeric, got {type(v).__name__} with dtype {a.dtype}")
    return a


def _flat_arrays(group, d):
    """{"group/name": array} for a flat dict of arrays (nested dicts are refused: keys must be simple)."""
    out = {}
    for k, v in (d or {}).items():
        if not isinstance(k, str) or not k:
            raise InputError(f"checkpoint {group} keys must be non-empty strings, got {k!r}")
        if isinstance(v, dict):
            raise InputError(f"checkpoint {group}/{k}: nested dicts are not supported; flatten the names")
        out[f"{group}/{k}"] = _to_numpy(v, f"{group}/{k}")
    return out


def _split_json(group, d):
    """Split a dict into its array-valued entries (stored as group/<key>) and a JSON-able rest."""
    if d is None:
        return {}, None
    if not isinstance(d, dict):
        raise InputError(f"checkpoint {group} must be a dict, got {type(d).__name__}")
    arrays = {k: v for k, v in d.items() if isinstance(v, np.ndarray) or hasattr(v, "detach")}
    rest = {k: v for k, v in d.items() if k not in arrays}
    return _flat_arrays(group, arrays), rest


def _jsonable(config):
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise InputError(f"checkpoint config must be a dict or a dataclass, got {type(config).__name__}")
    return config


def save(path, params, ema=None, opt_state=None, config=None, step=0, rng_state=None, extra=None):
    """Write a checkpoint atomically to ``path`` (a .npz file; parent folders are created)."""
    if not params:
        raise InputError("checkpoint needs a non-empty params dict")
    rng_arrays, rng_json = _split_json("rng", rng_state)
    extra_arrays, extra_json = _split_json("extra", extra)
    meta = {"format": FORMAT, "version": VERSION, "step": int(step), "config": _jsonable(config),
            "rng_state": rng_json, "extra": extra_json or {}}
    try:
        meta_str = json.dumps(meta, allow_nan=True)
    except TypeError as e:
        raise InputError(f"checkpoint config/rng_state/extra must be JSON-serialisable: {e}") from e
    arrays = {**_flat_arrays("params", params), **_flat_arrays("ema", ema), **_flat_arrays("opt", opt_state),
              **rng_arrays, **extra_arrays, "meta": np.array(meta_str)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_savez(path, arrays)
    return path


def _atomic_savez(path, arrays):
    """np.savez into a temp file beside ``path``, fsync, then os.replace (atomic on POSIX and Windows)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _chmod_like_open(fd)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable; not possible on every platform
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _umask():
    """The process umask, read without changing it where the OS tells (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _chmod_like_open(fd):
    """mkstemp makes the file private (0600); give it the mode open() would (0666 less the umask)."""
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except (AttributeError, OSError):  # not on every platform
        pass


# ---- loading --------------------------------------------------------------------------------------

def load(path):
    """Read a checkpoint written by ``save``. Raises InputError naming what is wrong with the file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a checkpoint file (did you mean {path / 'ckpt.npz'}?)")
    if not path.is_file():
        raise InputError(f"checkpoint file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        raise InputError(f"{path} is a single .npy array, not a checkpoint (.npz)")
    if head[:4] != b"PK\x03\x04":
        what = "an empty file" if not head else "not a zip archive"
        raise InputError(f"cannot read checkpoint {path}: {what}, so not a valid .npz file (truncated or corrupt?)")
    try:
        # numpy reads a member's bytes without always reaching its end, where zipfile checks the CRC: a bit flipped
        # in a .npy header's padding would load silently. testzip reads every member whole and checks each CRC.
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise ValueError(f"member {bad} fails its CRC check")
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise InputError(f"{path} is a single .npy array, not a checkpoint (.npz)")
        with z:
            arrays = {k: z[k] for k in z.files}                   # read everything now: a bad member fails here
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - damaged bytes surface as many types (BadZipFile, ValueError,
        # NotImplementedError for a bad version field, SyntaxError for a bad .npy header, ...): all mean "corrupt"
        raise InputError(f"cannot read checkpoint {path}: not a valid .npz file (truncated or corrupt?): "
                         f"{type(e).__name__}: {e}") from e
    if "meta" not in arrays:
        raise InputError(f"{path} is not a ddpm-executable checkpoint: it has no 'meta' entry")
    meta = _read_meta(arrays.pop("meta"), path)
    groups = {g: {} for g in _GROUPS}
    for k, v in arrays.items():
        g, _, name = k.partition("/")
        if g not in groups or not name:
            raise InputError(f"{path}: unexpected entry {k!r} (not one of {', '.join(_GROUPS)}/<name>)")
        groups[g][name] = v
    rng = meta.get("rng_state")
    rng = None if rng is None and not groups["rng"] else {**(rng or {}), **groups["rng"]}
    return Checkpoint(params=groups["params"], ema=groups["ema"] or None, opt_state=groups["opt"] or None,
                      config=meta.get("config") or {}, step=int(meta.get("step", 0)), rng_state=rng,
                      extra={**(meta.get("extra") or {}), **groups["extra"]}, path=str(path),
                      version=meta["version"])


def _read_meta(raw, path):
    try:
        meta = json.loads(str(raw[()]))
    except (json.JSONDecodeError, TypeError, ValueError, IndexError) as e:
        raise InputError(f"{path}: the 'meta' entry is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path} is not a ddpm-executable checkpoint (meta format is "
                         f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    v = meta.get("version")
    if v != VERSION:
        raise InputError(f"{path}: checkpoint format version {v!r}, but this code reads version {VERSION}")
    return meta


# ---- compatibility ------------------------------------------------------------------------------

def _norm(v):
    """Tuples -> lists (JSON has no tuples), recursively, so (1, 2) matches a stored [1, 2]."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def check_compatible(ckpt_config, expected_config, keys=None):
    """Raise InputError naming every field where the checkpoint's config differs from the expected one.

    keys: fields to compare (default: every field of ``expected_config`` whose value is not None,
    i.e. every flag the user actually gave). Messages read "checkpoint has T=1000 but --T 500 was given".
    """
    ckpt, want = _jsonable(ckpt_config), _jsonable(expected_config)
    if keys is None:
        keys = [k for k, v in want.items() if v is not None]
    problems = []
    for k in keys:
        flag = "--" + k.replace("_", "-")
        if k not in want or want[k] is None:
            continue
        if k not in ckpt:
            problems.append(f"checkpoint does not record {k} but {flag} {want[k]} was given")
        elif _norm(ckpt[k]) != _norm(want[k]):
            problems.append(f"checkpoint has {k}={ckpt[k]} but {flag} {want[k]} was given")
    if problems:
        raise InputError("checkpoint does not match the requested settings:\n  " + "\n  ".join(problems)
                         + "\nDrop those flags to use the checkpoint's values.")
