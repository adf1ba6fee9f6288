"""Completion markers: ``<notebook>.done`` says that a step of the sweep finished, keyed by content.

A marker records the step's key (its parameters without the run root, so a moved or copied run root stays valid;
the sha256 of every input file it read; and what the sweep adds: the configuration fields it reads and its code,
``study.keys``) and the sha256 of every output file it wrote. A step counts as done only while both still hold: a
changed key (new parameters, a recomputed input, edited code …) or a damaged or missing output make the sweep run it
again. Markers are written last and atomically.

Parameters handed to the notebooks as JSON text (``JSON_TEXT``: the sweep's ``--set`` overrides) are keyed by what
they say, not how they are spelled: ``--set a=1 --set b=2`` and ``--set b=2 --set a=1`` are one step. Markers written
before keyed the text itself; they compare by content too, so they stay valid. Where a key also holds the
configuration fields its step reads (``config``: every sweep's key), the overrides are left out of it: they are
``StudyConfig`` fields, and the fields the step reads are keyed already, resolved. A ``--set`` that a step does not
read (``methods``, for pre-training) leaves it done.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .files import atomic_write_json, file_sha256

UNKEYED = ("run_root",)  # parameters that say where, not what
JSON_TEXT = ("overrides",)  # parameters passed as JSON text, keyed by their content (an object's fields are unordered)


def digests(files: Mapping[str, Path]) -> dict[str, str | None]:
    """name → sha256 of each file (None where it does not exist)."""
    return {name: file_sha256(path) if path.is_file() else None for name, path in files.items()}


def _keyed(key: Mapping[str, Any]) -> dict[str, Any]:
    """``key`` with its ``JSON_TEXT`` parameters read, and left out where the key holds ``config`` (see above)."""
    parameters = _parsed(key["parameters"])
    if "config" in key:
        parameters = {k: v for k, v in parameters.items() if k not in JSON_TEXT}
    return {**key, "parameters": parameters}


def _parsed(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` with each ``JSON_TEXT`` value that is text read as JSON (a marker's, old or new, or a step's)."""
    return {k: json.loads(v) if k in JSON_TEXT and isinstance(v, str) else v for k, v in parameters.items()}


def step_key(parameters: Mapping[str, Any], inputs: Mapping[str, Path], **more: Any) -> dict[str, Any]:
    """What a finished step must agree on: its parameters (less ``UNKEYED``, ``JSON_TEXT`` read), its inputs'
    content, and ``more`` (the sweep adds the configuration fields it reads and its code: ``study.keys``)."""
    return _keyed({"parameters": {k: v for k, v in parameters.items() if k not in UNKEYED},
                   "inputs": digests(inputs), **more})


def stored_key(done: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A marker's key with its parameters read as ``step_key`` reads them (None for no marker or no key)."""
    try:
        return _keyed(done["key"])
    except (TypeError, KeyError, json.JSONDecodeError):
        return None


def changed_outputs(done: Mapping[str, Any] | None, outputs: Mapping[str, Path]) -> list[str]:
    """The outputs that are not the files the step wrote (changed, damaged or missing since)."""
    recorded = (done or {}).get("outputs", {})
    return sorted(name for name, digest in digests(outputs).items() if recorded.get(name) != digest)


def read_marker(marker: Path) -> dict[str, Any] | None:
    """The marker's content, or None when it is missing or unreadable (a damaged marker means: redo)."""
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_done(marker: Path, key: Mapping[str, Any], outputs: Mapping[str, Path]) -> dict[str, Any] | None:
    """The marker if the step finished with this ``key`` and its outputs are still the files it wrote, else None."""
    done = read_marker(marker)
    stored = stored_key(done)
    if stored is None:  # no marker, or one without a readable key: redo
        return None
    if stored != json.loads(json.dumps(key)):
        return None
    if done.get("outputs") != digests(outputs):
        return None
    return done


def mark_done(marker: Path, key: Mapping[str, Any], outputs: Mapping[str, Path], **info: Any) -> dict[str, Any]:
    """Write the marker of a finished step (after its outputs) and return it."""
    missing = [str(path) for path in outputs.values() if not path.is_file()]
    if missing:
        raise RuntimeError(f"step finished without writing {', '.join(missing)}")
    done = {"key": dict(key), "outputs": digests(outputs), **info}
    atomic_write_json(marker, done)
    return done
