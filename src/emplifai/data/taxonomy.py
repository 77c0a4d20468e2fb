"""The emotion taxonomy as data: any YAML of the shape `name` + `emotions: [{key, ja, description}]`."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from emplifai.core.errors import UserError
from emplifai.core.paths import resolve


class TaxonomyError(UserError):
    pass


@dataclass(frozen=True)
class Emotion:
    key: str
    ja: str
    description: str = ""


@dataclass(frozen=True)
class Taxonomy:
    name: str
    emotions: tuple[Emotion, ...]

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.emotions]

    @property
    def ja_names(self) -> list[str]:
        return [e.ja for e in self.emotions]

    def ja(self, key: str) -> str:
        return self._by_key[key].ja

    def lookup(self, label: str) -> str | None:
        """A key or Japanese name (any case/width) → key; None if unknown."""
        norm = unicodedata.normalize("NFKC", str(label)).strip().lower()
        return self._index.get(norm)

    @property
    def _by_key(self) -> dict[str, Emotion]:
        return {e.key: e for e in self.emotions}

    @property
    def _index(self) -> dict[str, str]:
        index = {}
        for e in self.emotions:
            for name in (e.key, e.ja):
                index[unicodedata.normalize("NFKC", name).strip().lower()] = e.key
        return index

    @classmethod
    def from_mapping(cls, data: dict, source: str) -> Taxonomy:
        if not isinstance(data, dict) or not isinstance(data.get("emotions"), list) or not data["emotions"]:
            raise TaxonomyError(f"{source}: a taxonomy needs `name` and a non-empty `emotions` list")
        emotions = []
        for i, item in enumerate(data["emotions"], start=1):
            if not isinstance(item, dict) or not item.get("key") or not item.get("ja"):
                raise TaxonomyError(f"{source}: emotion #{i} needs `key` and `ja` (got {item!r})")
            emotions.append(Emotion(str(item["key"]).strip(), str(item["ja"]).strip(),
                                    str(item.get("description") or "").strip()))
        tax = cls(str(data.get("name") or Path(source).stem), tuple(emotions))
        for kind, names in (("key", tax.keys), ("ja", tax.ja_names)):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise TaxonomyError(f"{source}: duplicate {kind} {sorted(dup)}")
        return tax

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Taxonomy:
        """`taxonomy.file` (a path) wins over the inline emotions of the config group."""
        if cfg.get("file"):
            path = resolve(cfg.file)
            if not path.exists():
                raise TaxonomyError(f"taxonomy file not found: {path}")
            return cls.from_mapping(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
        return cls.from_mapping(OmegaConf.to_container(cfg, resolve=True), f"conf/taxonomy/{cfg.get('name')}")
