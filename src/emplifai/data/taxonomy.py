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


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        keys = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in keys:
                raise TaxonomyError(f"line {key_node.start_mark.line + 1}: key {key!r} given twice")
            keys.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: Path) -> object:
    """The taxonomy file, with a syntax error or a repeated key reported as file:line, not a traceback."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader
    except TaxonomyError as err:
        raise TaxonomyError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise TaxonomyError(f"{path}: not valid YAML ({where}{getattr(err, 'problem', None) or err})") from None
    except UnicodeDecodeError as err:
        raise TaxonomyError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def normalized(label: str) -> str:
    """How labels are matched: NFKC, trimmed, lower case (`Joy`, `ｊｏｙ` and `joy` are one label)."""
    return unicodedata.normalize("NFKC", label).strip().lower()


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
        return self._index.get(normalized(str(label)))

    @property
    def _by_key(self) -> dict[str, Emotion]:
        return {e.key: e for e in self.emotions}

    @property
    def _index(self) -> dict[str, str]:
        index = {}
        for e in self.emotions:
            for name in (e.key, e.ja):
                index[normalized(name)] = e.key
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
        seen: dict[str, tuple[str, str]] = {}  # labels match after NFKC + lower case: `Joy` and `joy` are one
        for e in tax.emotions:
            for name in (e.key, e.ja):
                owner, first = seen.setdefault(normalized(name), (e.key, name))
                if owner != e.key:
                    raise TaxonomyError(f"{source}: duplicate label {name!r} (emotion {e.key!r}) collides with "
                                        f"{first!r} (emotion {owner!r}): labels are matched case- and "
                                        "width-insensitively, so they must differ after NFKC + lower case")
        return tax

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Taxonomy:
        """`taxonomy.file` (a path) wins over the inline emotions of the config group."""
        if cfg.get("file"):
            path = resolve(cfg.file)
            if not path.exists():
                raise TaxonomyError(f"taxonomy file not found: {path}")
            return cls.from_mapping(load_yaml(path), str(path))
        return cls.from_mapping(OmegaConf.to_container(cfg, resolve=True), f"conf/taxonomy/{cfg.get('name')}")
