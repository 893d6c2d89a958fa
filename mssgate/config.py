"""Policy file (YAML) -> compiled Policy, with errors that name the file, the line and the field.

This is the I/O edge of the policy: it reads the YAML and the domain lists the policy names, and
hands their contents to the pure :func:`mssgate.policy.compile_policy`. Duplicate keys are
errors (PyYAML would silently keep the last one: a rule could be switched off unseen).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mssgate.domainlist import (
    DomainListError,
    check_not_shrunk,
    parse_allow_list,
    parse_national_list,
)
from mssgate.policy import Location, Policy, PolicyError, compile_policy, dotted
from mssgate.schema import NationalListConfig, PolicyDocument

DEMO_NAME = "demo.yaml"


class ConfigError(ValueError):
    """A policy that does not load; ``errors`` are ``file:line: field: message`` lines."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A compiled policy, where it came from, and what IT should know about it."""

    policy: Policy
    source: str
    warnings: tuple[str, ...] = ()


def demo_policy_text() -> str:
    """The embedded demo policy (also shipped as ``config/demo.yaml``)."""
    return resources.files("mssgate").joinpath("data", DEMO_NAME).read_text("utf-8")


def _check_duplicates(node: yaml.Node, source: str, errors: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key in seen:
                errors.append(
                    f"{source}:{line}: clé {key!r} en double (déjà à la ligne {seen[key]})"
                )
            elif key is not None:
                seen[key] = line
            _check_duplicates(value_node, source, errors)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, source, errors)


def _line_of(root: yaml.Node | None, loc: Location) -> int:
    """The line (1-based) of the deepest YAML node on a field path."""
    node = root
    line = root.start_mark.line + 1 if root is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if getattr(k, "value", None) == part]
            if not match:
                break
            key_node = next(k for k, v in node.value if v is match[0])
            node = match[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _parse_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        errors: list[str] = []
        if node is not None:
            _check_duplicates(node, source, errors)
        if errors:
            raise ConfigError(errors)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{source}:{line}: YAML invalide : {exc.problem or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: YAML invalide : {exc}"]) from exc
    finally:
        loader.dispose()
    return data, node


def _resolve(base: Path | None, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() or base is None else base / path


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_national_list(
    config: NationalListConfig,
    base: Path | None,
    previous: frozenset[str] | None,
    warnings: list[str],
) -> frozenset[str]:
    """Read the ANS list; keep the previous (or last good) one when the new copy is bad."""
    path = _resolve(base, config.file)
    last_good = _resolve(base, config.last_good) if config.last_good else None
    if previous is None and last_good is not None and last_good.exists():
        try:
            previous = parse_national_list(last_good.read_bytes())
        except (OSError, DomainListError) as exc:
            warnings.append(f"{last_good}: copie de secours illisible, ignorée ({exc})")
    try:
        data = path.read_bytes()
        domains = parse_national_list(data)
        check_not_shrunk(domains, previous, config.max_loss)
    except (OSError, DomainListError) as exc:
        if previous is None:
            raise ConfigError([f"{path}: liste nationale MSSanté refusée : {exc}"]) from exc
        warnings.append(
            f"{path}: liste nationale refusée ({exc}) ; la précédente "
            f"({len(previous)} domaines) reste en vigueur"
        )
        return previous
    if last_good is not None:
        try:
            _write_atomically(last_good, data)
        except OSError as exc:
            warnings.append(f"{last_good}: copie de secours non écrite ({exc})")
    return domains


def load_policy_text(
    text: str,
    source: str,
    base: Path | None = None,
    previous: Policy | None = None,
) -> LoadedPolicy:
    """Validate and compile a policy given as YAML text; raise :class:`ConfigError`."""
    data, root = _parse_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: la politique doit être un dictionnaire YAML"])
    try:
        document = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "clé inconnue (faute de frappe ?)"
            elif err["type"] == "missing":
                message = "champ obligatoire manquant"
            errors.append(f"{source}:{_line_of(root, loc)}: {dotted(loc)}: {message}")
        raise ConfigError(errors) from exc

    warnings: list[str] = []
    allow_list: frozenset[str] = frozenset()
    if document.domains.allow_list_file:
        path = _resolve(base, document.domains.allow_list_file)
        try:
            allow_list = parse_allow_list(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, DomainListError) as exc:
            line = _line_of(root, ("domains", "allow_list_file"))
            raise ConfigError([f"{source}:{line}: domains.allow_list_file: {exc}"]) from exc
    national = None
    if document.domains.national_list is not None:
        before = previous.domains.national if previous is not None else None
        national = load_national_list(document.domains.national_list, base, before, warnings)
    try:
        policy = compile_policy(document, national=national, allow_list=allow_list)
    except PolicyError as exc:
        raise ConfigError(
            [f"{source}:{_line_of(root, loc)}: {dotted(loc)}: {msg}" for loc, msg in exc.problems]
        ) from exc
    return LoadedPolicy(policy=policy, source=source, warnings=tuple(warnings))


def load_policy(path: str | Path | None = None, previous: Policy | None = None) -> LoadedPolicy:
    """Load a policy file, or the embedded demo policy when ``path`` is None."""
    if path is None:
        return load_policy_text(demo_policy_text(), f"(démo intégrée) {DEMO_NAME}")
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: illisible : {exc}"]) from exc
    return load_policy_text(text, str(file), base=file.resolve().parent, previous=previous)
