"""``RUN_DIR/compare.json``: the typed artifact of ``shed compare`` (the ``--json`` payload), read by the report."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shed_jax.errors import DataError
from shed_jax.io import atomic_write_json

__all__ = ["Comparison"]


@dataclass(frozen=True, eq=False)
class Comparison:
    """A comparison's result: ``recipe`` (dict), ``sets`` (list), ``evals`` (list of test-set metrics with rows)."""

    recipe: dict
    sets: list
    evals: list
    timing: dict | None = None

    FILENAME = "compare.json"

    def to_json(self) -> dict:
        out = {"recipe": self.recipe, "sets": self.sets, "evals": self.evals}
        if self.timing is not None:
            out["timing"] = self.timing
        return out

    @classmethod
    def from_json(cls, payload: dict, path=None) -> "Comparison":
        if not isinstance(payload, dict):
            raise DataError("expected an object", path=path)
        for key, kind in (("recipe", dict), ("evals", list)):
            if not isinstance(payload.get(key), kind):
                raise DataError(f"missing or not a {kind.__name__}", path=path, field=key)
        for i, ev in enumerate(payload["evals"]):
            if not isinstance(ev, dict) or not isinstance(ev.get("rows"), list) or "metric" not in ev:
                raise DataError("each entry needs 'metric' and a 'rows' list", path=path, field=f"evals[{i}]")
            for j, row in enumerate(ev["rows"]):
                if not isinstance(row, dict) or not isinstance(row.get("mean"), (int, float)) or \
                        not isinstance(row.get("ci95"), list) or len(row["ci95"]) != 2:
                    raise DataError("each row needs 'mean' and 'ci95' [lo, hi]", path=path,
                                    field=f"evals[{i}].rows[{j}]")
        return cls(payload["recipe"], payload.get("sets") or [], payload["evals"], payload.get("timing"))

    def save(self, run_dir) -> Path:
        path = Path(getattr(run_dir, "path", run_dir)) / self.FILENAME
        atomic_write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, run_dir) -> "Comparison":
        path = Path(getattr(run_dir, "path", run_dir)) / cls.FILENAME
        if not path.is_file():
            raise FileNotFoundError(2, "not found", str(path))
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"not valid JSON: {exc}", path=path) from None
        return cls.from_json(payload, path)
